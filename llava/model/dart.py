"""DART inside our LLaVA's LLM (the hooks: :mod:`llava.model.llm_pruning`; the selection and
what it takes from the released code: :mod:`holov_patches.methods.dart`).

- ``capture`` (layer K-1's input): the layer's attention keys as the layer computes them
  (input_layernorm, k_proj, rotary embedding, KV heads repeated), heads concatenated
  [B, T, H * hd], as the released code reads them from its patched attention.
- ``select`` (layer K's input, i.e. layer K-1's output): the hidden states through the LLM's
  final norm, split into the image tokens and each row's text after its last image token
  (real tokens only), with each token's position in the unpadded prompt (for the released
  pivot visiting order).

Options (``PruningConfig.options``): ``layer`` (K, default 2), ``pivot_image`` (4),
``pivot_text`` (4), ``budget`` ("released" or "exact").
"""
from __future__ import annotations

import torch

from holov_patches.config import PruningConfig
from holov_patches.methods.dart import BUDGETS, DEFAULT_LAYER, DEFAULT_PIVOT_IMAGE, DEFAULT_PIVOT_TEXT
from holov_patches.methods._contract import check_choice
from holov_patches.registry import get_pruner
from llava.model.llm_signals import check_layer, check_options, rotary_keys

OPTIONS = ("layer", "pivot_image", "pivot_text", "budget")


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class DartInLLM:
    def __init__(self, config: PruningConfig, lm):
        opts = config.options
        check_options("dart", opts, OPTIONS)
        self.config = config
        self.layer = check_layer("dart", opts.get("layer", DEFAULT_LAYER), len(lm.layers))
        self.norm = lm.norm
        self.kwargs = {"pivot_image": opts.get("pivot_image", DEFAULT_PIVOT_IMAGE),
                       "pivot_text": opts.get("pivot_text", DEFAULT_PIVOT_TEXT), "budget": opts.get("budget", "released")}
        check_choice("budget", self.kwargs["budget"], BUDGETS)
        for name in ("pivot_image", "pivot_text"):
            value = self.kwargs[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"dart {name}={value!r} must be an integer >= 0")

    def capture(self, layer, hidden: torch.Tensor, kwargs, real) -> torch.Tensor:
        """[B, T, H * hd] layer K-1's rotary keys, heads concatenated."""
        keys = rotary_keys(layer.self_attn, layer.input_layernorm(hidden), kwargs["position_embeddings"])
        return keys.transpose(1, 2).flatten(2)

    def select(self, keys: torch.Tensor, hidden: torch.Tensor, visual: torch.Tensor, vis_pos: torch.Tensor,
               real: torch.Tensor) -> torch.Tensor:
        states = self.norm(hidden)  # [B, T, D]
        bsz, seq = visual.shape
        steps = torch.arange(seq, device=visual.device).expand(bsz, -1)
        in_prompt = real.long().cumsum(1) - 1  # position of each real token in the unpadded prompt
        text = real & (steps > vis_pos[:, -1:])  # each row's real tokens after its last image token
        width = int(text.sum(1).max())
        text_pos = torch.sort((~text).to(torch.int8), dim=1, stable=True).indices[:, :width]  # text positions first, in order
        text_mask = text.gather(1, text_pos)
        keep = self.config.resolve_keep(vis_pos.shape[1])
        return get_pruner("dart")(_gather(keys, vis_pos), _gather(states, vis_pos), _gather(keys, text_pos),
                                  _gather(states, text_pos), keep, text_mask=text_mask,
                                  image_positions=in_prompt.gather(1, vis_pos), text_positions=in_prompt.gather(1, text_pos),
                                  **self.kwargs)
