"""FastV inside our LLaVA's LLM (the hooks: :mod:`llava.model.llm_pruning`).

FastV (arXiv 2403.06764) ranks the image tokens by the attention the last token pays them
in layer K-1 (heads averaged) and lets layers K, K+1, ... see only the kept ones. SDPA does
not return attention weights, so ``capture`` recomputes that one attention row per batch row
from layer K-1's input with the layer's own q/k projections and rotary embedding.

The query is each row's LAST REAL token (the authors run batch size 1, where it is the
last position): in a right-padded batch the last position of a shorter row is a pad, and
ranking by it would keep other tokens than the row run alone.
"""
from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from holov_patches.config import PruningConfig
from holov_patches.methods.fastv import DEFAULT_LAYER
from holov_patches.registry import get_pruner
from llava.model.llm_signals import check_layer, check_options, last_real, rotary_keys

OPTIONS = ("layer",)


def fastv_layer(config: PruningConfig, num_layers: int) -> int:
    return check_layer("fastv", config.options.get("layer", DEFAULT_LAYER), num_layers)


class FastVInLLM:
    def __init__(self, config: PruningConfig, lm):
        check_options("fastv", config.options, OPTIONS)
        self.config = config
        self.layer = fastv_layer(config, len(lm.layers))

    def capture(self, layer, hidden: torch.Tensor, kwargs, real: torch.Tensor) -> torch.Tensor:
        """[B, T] layer K-1's attention row of each row's last real token, heads averaged (float32)."""
        attn = layer.self_attn
        bsz, seq, _ = hidden.shape
        rows = torch.arange(bsz, device=hidden.device)
        last = last_real(real)  # [B]
        normed = layer.input_layernorm(hidden)
        cos, sin = kwargs["position_embeddings"]  # [B or 1, T, hd]
        q_cos, q_sin = (t.expand(bsz, -1, -1)[rows, last][:, None] for t in (cos, sin))  # [B, 1, hd]
        q = attn.q_proj(normed[rows, last][:, None]).view(bsz, 1, -1, attn.head_dim).transpose(1, 2)  # [B, H, 1, hd]
        q, _ = apply_rotary_pos_emb(q, q, q_cos, q_sin)
        k = rotary_keys(attn, normed, (cos, sin))  # [B, H, T, hd]
        logits = torch.matmul(q, k.transpose(2, 3)).float() * attn.scaling  # [B, H, 1, T]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):  # padding: 4-D bool (True = attend) or additive float mask
            row_mask = mask.expand(bsz, -1, -1, -1)[rows, :, last, :seq][:, :, None]  # [B, 1, 1, T]
            logits = logits.masked_fill(~row_mask, float("-inf")) if row_mask.dtype == torch.bool else logits + row_mask.float()
        return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # [B, T]

    def select(self, row: torch.Tensor, hidden, visual, vis_pos: torch.Tensor, real) -> torch.Tensor:
        keep = self.config.resolve_keep(vis_pos.shape[1])
        return get_pruner("fastv")(row.gather(1, vis_pos), keep)  # [B, K] sorted

