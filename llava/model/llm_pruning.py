"""Visual-token pruning inside our LLaVA's LLM (FastV, DART), with SDPA left on: one set of
hooks for every in-LLM method; the method decides what it reads and which tokens it keeps.

Every in-LLM method of the registry runs the first K decoder layers on all tokens and lets
layers K, K+1, ... see only the image tokens it keeps. We do it with forward pre-hooks on this
model instance's decoder layers (removable, no class patched):

- layer K-1 (its input): the method's ``capture`` reads what it needs from that layer while
  it still sees every token (FastV: the attention row of each row's last real token; DART: the
  layer's rotary keys);
- layer K, first call of the prefill (its input is layer K-1's output): the method's
  ``select`` returns the kept image tokens of every row; then, in every layer >= K, the
  prefill gathers the kept positions from the hidden states (first layer >= K only: the
  later ones receive the shortened sequence), the rotary embeddings, the position ids and the
  4-D mask, which the decoder loop computes once for the unpruned sequence; during decoding,
  the hook gathers the mask columns (the KV caches of layers >= K hold only the kept
  positions). The prefill is told apart from a decoding step by the length of the rotary
  embeddings the loop passes, not by the hidden states.

Positions keep their original values (rotary phases are gathered, not recomputed), and
decoding continues from the full prompt length. Padding (left or right) is read from the
decoder's 4-D mask: a token is real when it may attend to itself. Limits: every row of a
batch must hold the same number of image tokens.

A method adapter (``llava.model.fastv.FastVInLLM``, ``llava.model.dart.DartInLLM``) is a class
built from ``(config, lm)`` with ``layer`` (K) and two calls::

    capture(layer, hidden [B, T, D], kwargs, real [B, T] bool) -> anything
    select(captured, hidden [B, T, D], visual [B, T] bool, vis_pos [B, N], real [B, T] bool)
        -> kept image tokens [B, K'] sorted, as indices into vis_pos
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from holov_patches.config import PruningConfig
from llava.model.dart import DartInLLM
from llava.model.fastv import FastVInLLM
from llava.model.llm_signals import real_tokens

IN_LLM_METHODS = {"fastv": FastVInLLM, "dart": DartInLLM}


class LLMPruningHooks:
    """The hooks of one in-LLM method (``config.method``) on ``lm``'s decoder layers."""

    def __init__(self, lm, config: PruningConfig):
        if config.method not in IN_LLM_METHODS:
            raise ValueError(f"method {config.method!r} has no in-LLM integration in our LLaVA; "
                             f"in-LLM methods: {sorted(IN_LLM_METHODS)}")
        self.config = config
        layers = lm.layers
        self.method = IN_LLM_METHODS[config.method](config, lm)
        self.layer = self.method.layer
        self.pending_visual: Optional[torch.Tensor] = None  # [B, T] image-token positions of the next prefill
        self.captured: Any = None  # what the method read in layer K-1, until layer K selects
        self.real: Optional[torch.Tensor] = None  # [B, T] non-padding tokens of the armed prefill
        self.keep_index: Optional[torch.Tensor] = None  # [B, T'] positions kept for layers >= K
        self.full_len = 0
        self.handles = [layers[self.layer - 1].register_forward_pre_hook(self._capture, with_kwargs=True)]
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
            raise ValueError(f"{self.config.method} needs the same number of image tokens in every row, got {counts.tolist()}")
        self.pending_visual = visual_mask
        self.captured = None
        self.keep_index = None

    @staticmethod
    def _hidden(args, kwargs) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    def _capture(self, layer, args, kwargs):
        hidden = self._hidden(args, kwargs)
        visual = self.pending_visual
        if visual is None or hidden.shape[1] != visual.shape[1] or not visual.any():
            return None
        bsz, seq, _ = hidden.shape
        self.real = real_tokens(kwargs.get("attention_mask"), bsz, seq, hidden.device)
        self.captured = self.method.capture(layer, hidden, kwargs, self.real)
        self.full_len = seq
        return None

    def _select(self, hidden: torch.Tensor) -> None:
        visual = self.pending_visual.to(hidden.device)
        bsz = hidden.shape[0]
        n_vis = int(visual[0].sum())
        vis_pos = visual.nonzero()[:, 1].view(bsz, n_vis)  # [B, N_vis]
        kept = self.method.select(self.captured, hidden, visual, vis_pos, self.real)  # [B, K'] into vis_pos
        keep_mask = ~visual
        keep_mask.scatter_(1, vis_pos.gather(1, kept), True)
        self.keep_index = keep_mask.nonzero()[:, 1].view(bsz, -1)  # [B, T'] sorted positions
        self.captured = None
        self.pending_visual = None

    def _prune(self, layer, args, kwargs):
        hidden = self._hidden(args, kwargs)
        if self.captured is not None and hidden.shape[1] == self.full_len:
            self._select(hidden)
        index = self.keep_index
        if index is None:
            return None
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
