"""VisPruner as its authors run it: in the vision tower, before the projector.

Paper: "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs" (Zhang et al., ICCV 2025, arXiv 2412.01818); code: Theia-4869/VisPruner,
``llava/model/llava_arch.py`` ``encode_images`` and
``llava/model/multimodal_encoder/clip_encoder.py`` ``feature_select``.

The budget K splits into ``int(K * important_ratio)`` "important" patches, the ones the
[CLS] query attends to most, and the rest, "diverse" patches kept by repeatedly discarding
near-duplicates among the patches that were not important.

Inputs (stage ``tower``): ``tokens`` [B, N, C] the patch hidden states of the tower layer
LLaVA reads (``mm_vision_select_layer``), ``cls_attn`` [B, N] the [CLS] -> patch attention of
the same layer averaged over heads. The authors read ``attentions[select_layer]`` next to
``hidden_states[select_layer]`` (the attention inside the layer whose output is selected) and
take ``.mean(dim=1)`` over heads, in the tower's dtype: exactly our ``cls_attn``.

Algorithm, per image (all in the tokens' dtype, as the authors run it):
1. Rank the patches by ``cls_attn``, largest first. The first ``K_imp = int(K * r)`` are the
   important patches; the other ``N - K_imp`` form the residual list, IN THAT RANKED ORDER.
2. Unit-normalise the patch features (``x / ||x||``, no epsilon). While the residual list
   holds more than ``K_div = K - K_imp`` patches, one round:
   - ``d = min(max_drop_per_round, R - K_div)`` (the authors hard-code 8) with R the list length;
   - split the list by position: set A = positions 0, 2, 4, ..., set B = positions 1, 3, ...;
   - each A patch scores its largest cosine similarity to any B patch;
   - the ``d`` highest-scoring A patches are dropped (at most all of A);
   - the new list is the surviving A patches ordered by score, highest first, then B in
     its order. The alternate split of the next round therefore sees a new order.
   The last round drops exactly the excess, so the list ends with K_div patches.
3. The kept patches (important + residual) are returned in raster order.

``K >= N`` keeps all N patches unpruned.

Deviations from the released code, all where that code has no defined answer:
- ties in the attention ranking and in the round scores go to the lower position / earlier
  list entry (stable sort); the authors' CUDA ``argsort`` leaves tie order unspecified;
- the authors' gather is written for an even list length R: it raises a shape error when R
  is odd (an odd ``N - K_imp``) or when d exceeds R // 2 by more than one. Here set A simply
  holds ceil(R / 2) patches and a round drops ``min(d, |A|)``; on every budget the released
  code runs (even R, d <= R // 2, e.g. the paper's K = 64/128/192 at r = 0.5 with N = 576)
  the result is the same;
- an all-zero patch vector (which their normalisation turns into NaN) is rejected with a
  ``ValueError`` when diverse patches are to be chosen.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

from holov_patches.methods._contract import check_pruner_inputs, gather_tokens, is_int, keep_all_tokens
from holov_patches.registry import register_pruner

DEFAULT_IMPORTANT_RATIO = 0.5  # the authors' --important_ratio default
DEFAULT_MAX_DROP_PER_ROUND = 8  # hard-coded in the authors' loop


def split_budget(keep: int, important_ratio: float) -> tuple:
    """(important, diverse) patch counts for a budget K: ``int(K * r)`` and the rest, as the authors."""
    important = int(keep * important_ratio)
    return important, keep - important


def remove_duplicates(unit: torch.Tensor, residual: torch.Tensor, target: int, max_drop: int) -> torch.Tensor:
    """unit [B, N, C] unit-norm patch features, residual [B, R] patch indices in the authors'
    list order -> [B, target] the indices that survive the matching-and-dropping rounds
    (step 2 of the module docstring), in the final list order."""
    while target > 0:
        length = residual.shape[1]
        drop = min(max_drop, length - target)
        if drop <= 0:
            break
        listed = gather_tokens(unit, residual)  # [B, R, C]
        set_a, set_b = listed[:, ::2], listed[:, 1::2]  # [B, ceil(R/2), C], [B, floor(R/2), C]
        scores = torch.bmm(set_a, set_b.transpose(1, 2)).max(dim=2).values  # [B, |A|]
        ranked = scores.argsort(dim=1, descending=True, stable=True)  # most redundant A patch first
        survivors = ranked[:, min(drop, ranked.shape[1]):]  # [B, |A| - dropped]
        residual = torch.cat([residual[:, ::2].gather(1, survivors), residual[:, 1::2]], dim=1)
    return residual


@register_pruner("vispruner", stage="tower", needs=("cls_attn",))
def prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, *, grid: Optional[Sequence[int]] = None,
          important_ratio: float = DEFAULT_IMPORTANT_RATIO, max_drop_per_round: int = DEFAULT_MAX_DROP_PER_ROUND):
    """Top [CLS]-attention patches + duplicate-free diverse patches, in the tower (VisPruner, arXiv 2412.01818)."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, finite_tokens=True)
    if (not isinstance(important_ratio, numbers.Real) or isinstance(important_ratio, bool)
            or not 0.0 <= float(important_ratio) <= 1.0):
        raise ValueError(f"important_ratio={important_ratio!r} must be a number in [0, 1] "
                         "(the share of the budget kept by [CLS] attention)")
    if not is_int(max_drop_per_round) or max_drop_per_round < 1:
        raise ValueError(f"max_drop_per_round={max_drop_per_round!r} must be an integer >= 1 "
                         f"(the authors use {DEFAULT_MAX_DROP_PER_ROUND})")
    batch, num, _ = tokens.shape
    if keep >= num:
        return keep_all_tokens(tokens)
    num_important, num_diverse = split_budget(keep, float(important_ratio))
    norms = tokens.norm(dim=-1, keepdim=True)  # [B, N, 1]
    if num_diverse > 0 and bool((norms == 0).any()):
        raise ValueError("tokens hold an all-zero patch vector; VisPruner compares unit-normalised features "
                         "and needs every patch non-zero")

    ranked = cls_attn.argsort(dim=1, descending=True, stable=True)  # [B, N]
    important, residual = ranked[:, :num_important], ranked[:, num_important:]
    if num_diverse > 0:
        residual = remove_duplicates(tokens / norms, residual, num_diverse, int(max_drop_per_round))
        selected = torch.cat([important, residual], dim=1)  # [B, K]
    else:
        selected = important
    index = selected.sort(dim=1).values  # raster order, as the authors' boolean mask gives
    return gather_tokens(tokens, index), index
