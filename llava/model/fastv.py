"""FastV inside our LLaVA's LLM, with SDPA left on.

FastV (arXiv 2403.06764) runs the first K decoder layers on every token, ranks the
image tokens by the attention the last token pays them in layer K-1 (heads averaged),
and lets layers K, K+1, ... see only the kept image tokens. We do it with forward
pre-hooks on this model instance's decoder layers (removable, no class patched):

- layer K-1: recompute that one attention row from the layer's input with its own
  q/k projections and rotary embedding (SDPA does not return weights), pick the kept
  image tokens through the registry's ``fastv`` selection;
- layers >= K: during the prefill, gather the kept positions from the hidden states (first
  layer >= K only: the later ones receive the shortened sequence) and, in every layer >= K,
  from the rotary embeddings, position ids and the 4-D mask, which the decoder loop computes
  once for the unpruned sequence; during decoding, gather the mask columns (their KV caches
  only hold the kept positions). The prefill is told apart from a decoding step by the
  length of the rotary embeddings the loop passes, not by the hidden states.

Positions keep their original values (rotary phases are gathered, not recomputed), and
decoding continues from the full prompt length. Limits: every row of a batch must hold
the same number of image tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from holov_patches.config import PruningConfig
from holov_patches.methods.fastv import DEFAULT_LAYER
from holov_patches.registry import get_pruner


def fastv_layer(config: PruningConfig, num_layers: int) -> int:
    layer = config.options.get("layer", DEFAULT_LAYER)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < num_layers:
        raise ValueError(f"fastv layer={layer!r} must be an integer in [1, {num_layers - 1}] for a {num_layers}-layer LLM")
    return layer


class FastVHooks:
    def __init__(self, lm, config: PruningConfig):
        unknown = sorted(set(config.options) - {"layer"})
        if unknown:
            raise ValueError(f"unknown fastv options {unknown}; accepted: ['layer']")
        self.config = config
        layers = lm.layers
        self.layer = fastv_layer(config, len(layers))
        self.pending_visual: Optional[torch.Tensor] = None  # [B, T] image-token positions of the next prefill
        self.keep_index: Optional[torch.Tensor] = None  # [B, T'] positions kept for layers >= K
        self.full_len = 0
        self.handles = [layers[self.layer - 1].register_forward_pre_hook(self._rank, with_kwargs=True)]
        self.handles += [layers[i].register_forward_pre_hook(self._prune, with_kwargs=True)
                         for i in range(self.layer, len(layers))]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def arm(self, visual_mask: torch.Tensor) -> None:
        """The next prefill of this sequence length prunes these image positions."""
        counts = visual_mask.sum(1)
        if (counts != counts[0]).any():
            raise ValueError(f"fastv needs the same number of image tokens in every row, got {counts.tolist()}")
        self.pending_visual = visual_mask
        self.keep_index = None

    @staticmethod
    def _hidden(args, kwargs) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    def _rank(self, layer, args, kwargs):
        hidden = self._hidden(args, kwargs)
        visual = self.pending_visual
        if visual is None or hidden.shape[1] != visual.shape[1] or not visual.any():
            return None
        attn = layer.self_attn
        bsz, seq, _ = hidden.shape
        normed = layer.input_layernorm(hidden)
        cos, sin = kwargs["position_embeddings"]
        q = attn.q_proj(normed[:, -1:]).view(bsz, 1, -1, attn.head_dim).transpose(1, 2)  # [B, H, 1, hd]
        k = attn.k_proj(normed).view(bsz, seq, -1, attn.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)
        logits = torch.matmul(q, k.transpose(2, 3)).float() * attn.scaling  # [B, H, 1, T]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):  # padding: 4-D bool (True = attend) or additive float mask
            last = mask[:, :, -1:, :seq]
            logits = logits.masked_fill(~last, float("-inf")) if last.dtype == torch.bool else logits + last.float()
        row = torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # [B, T]
        n_vis = int(visual[0].sum())
        vis_pos = visual.nonzero()[:, 1].view(bsz, n_vis)  # [B, N_vis]
        keep = self.config.resolve_keep(n_vis)
        kept = get_pruner("fastv")(row.gather(1, vis_pos), keep)  # [B, K] relative, sorted
        keep_mask = ~visual
        keep_mask.scatter_(1, vis_pos.gather(1, kept), True)
        self.keep_index = keep_mask.nonzero()[:, 1].view(bsz, -1)  # [B, T'] sorted positions
        self.full_len = seq
        self.pending_visual = None
        return None

    def _prune(self, layer, args, kwargs):
        index = self.keep_index
        if index is None:
            return None
        hidden = self._hidden(args, kwargs)
        bsz = hidden.shape[0]
        mask = kwargs.get("attention_mask")
        cos, sin = kwargs["position_embeddings"]  # [B or 1, T, hd]: the decoder loop's, unpruned, for every layer
        if cos.shape[1] == self.full_len:  # the prefill: every layer >= K sees only the kept tokens
            if hidden.shape[1] == self.full_len:  # the first such layer drops the pruned image tokens;
                hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # later ones get them dropped
            kwargs["position_embeddings"] = tuple(
                t.expand(bsz, -1, -1).gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in (cos, sin))
            if isinstance(kwargs.get("position_ids"), torch.Tensor):
                kwargs["position_ids"] = kwargs["position_ids"].expand(bsz, -1).gather(1, index)
            if isinstance(mask, torch.Tensor):
                rows = index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1])
                mask = mask.expand(bsz, -1, -1, -1).gather(2, rows)
                cols = index[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1)
                kwargs["attention_mask"] = mask.gather(3, cols)
        elif isinstance(mask, torch.Tensor):  # decoding: this layer's cache holds only kept positions
            extra = torch.arange(self.full_len, mask.shape[-1], device=index.device).expand(bsz, -1)
            cols = torch.cat([index, extra], dim=1)[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1)
            kwargs["attention_mask"] = mask.expand(bsz, -1, -1, -1).gather(3, cols)
        if args:
            args = (hidden,) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs
