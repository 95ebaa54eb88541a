"""VisionZip as its authors run it: inside the vision tower, before the projector.

Paper: "VisionZip: Longer is Better but Not Necessary in Vision Language Models"
(Yang et al., CVPR 2025, arXiv 2412.04467); code: dvlab-research/VisionZip (also the
``visionzip`` package on PyPI), its CLIP tower forward. Most patches get little [CLS]
attention; VisionZip keeps the [CLS] token and the most-attended patches ("dominant"),
and folds the other patches into a few "contextual" tokens so the background survives.

Inputs (stage ``tower``), all from the tower layer LLaVA reads (``mm_vision_select_layer``,
-2 for LLaVA-1.5; the authors hard-code -2):
``tokens`` [B, N, C] that layer's patch hidden states, ``cls_token`` [B, C] its [CLS]
hidden state, ``cls_attn_heads`` [B, H, N] its [CLS] -> patch attention per head (eager,
in the tower's dtype) and ``keys`` [B, N, hd] its patch keys averaged over heads.

Algorithm, per image, with D dominant rows (the [CLS] token counts as one) and C contextual:
1. Dominant patches: the D - 1 patches with the largest [CLS] attention SUMMED over heads
   (``torch.topk``), listed in raster order after the [CLS] token.
2. The R = N - (D - 1) other patches, in raster order, are split by position: targets at
   local positions 0, s, 2s, ... (the first C) with s = max(1, R // C); the rest merge.
3. Each merging patch joins the target whose key is most similar to its key (dot product of
   L2-normalised keys, first maximum on ties).
4. Contextual token = the target's hidden state + the MEAN of the hidden states that joined
   it (+ 0 when none joined): ``target + (one_hot^T @ members) / max(count, 1)``.
5. Output rows: [CLS, dominant patches (raster order), contextual tokens (target order)];
   the integration projects them afterwards.
All arithmetic is in the inputs' dtype with the authors' operations (normalise by
``norm``, ``bmm`` for similarity and for the sums, division by the clamped count), so a
float16 tower gives the float16 values their code gives.

Budget: K = D + C. The authors' README runs ``dominant=54, contextual=10`` for 64 tokens;
the default split keeps that ratio, C = round(K * 10 / 64) (halves up): K=128 gives
108 + 20 and K=192 gives 162 + 30. ``contextual=C`` overrides it (0 <= C <= K - 1: the
[CLS] row is always kept, as in their code); K = 1 keeps the [CLS] token alone. K >= N
keeps all N patches unpruned (the authors' code has no such case).

``kept_index``: a dominant row holds its patch index; the [CLS] row and the contextual rows
are not one input patch and hold ``NO_SOURCE_INDEX`` (-2). With ``position_ids="original"``
such a row takes the position of the image's last slot, as a zero pad does (the authors
renumber positions, which is our default ``compact``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from holov_patches.methods._contract import check_input, check_pruner_inputs, is_int, keep_all_tokens
from holov_patches.registry import NO_SOURCE_INDEX, register_pruner

PAPER_SPLIT = (54, 10)  # (dominant rows incl. [CLS], contextual rows) for K = 64, the authors' README


def default_contextual(keep: int) -> int:
    """Contextual tokens C for a budget K: round(K * 10 / 64) (halves up), at most K - 1."""
    dom, ctx = PAPER_SPLIT
    total = dom + ctx
    return min(keep - 1, (2 * ctx * keep + total) // (2 * total))  # floor(K * ctx / total + 1/2) in integers


def evenly_spaced_targets(num_remaining: int, contextual: int, device=None) -> torch.Tensor:
    """Local positions [C] of the targets among R remaining tokens: 0, s, 2s, ... with s = max(1, R // C)."""
    step = max(1, num_remaining // contextual)
    return torch.arange(0, num_remaining, step, device=device)[:contextual]


def merge_contextual(hidden: torch.Tensor, keys: torch.Tensor, contextual: int) -> torch.Tensor:
    """hidden [B, R, C], keys [B, R, hd] of the remaining patches (raster order) -> [B, C', C]
    contextual tokens, C' = min(C, R), in target order (steps 2-4 above)."""
    batch, remaining, _ = hidden.shape
    device = hidden.device
    unit = keys / keys.norm(dim=-1, keepdim=True)  # [B, R, hd], as the authors: no epsilon
    targets = evenly_spaced_targets(remaining, contextual, device)  # [C']
    is_member = torch.ones(remaining, dtype=torch.bool, device=device)
    is_member[targets] = False
    similarity = torch.bmm(unit[:, is_member], unit[:, targets].transpose(1, 2))  # [B, R - C', C']
    one_hot = torch.zeros(batch, int(is_member.sum()), targets.numel(), dtype=hidden.dtype, device=device)
    one_hot.scatter_(2, similarity.argmax(dim=2, keepdim=True), 1)
    counts = one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)  # [B, C', 1]
    joined = torch.bmm(one_hot.transpose(1, 2), hidden[:, is_member]) / counts  # [B, C', C]
    return hidden[:, targets] + joined


@register_pruner("visionzip", stage="tower", needs=("cls_attn_heads", "keys", "cls_token"), merges=True)
def prune(tokens: torch.Tensor, cls_attn: Optional[torch.Tensor], keep: int, *, grid: Optional[Sequence[int]] = None,
          cls_attn_heads: torch.Tensor, keys: torch.Tensor, cls_token: torch.Tensor, contextual: Optional[int] = None):
    """[CLS] + dominant patches by summed [CLS] attention + key-similarity contextual merges, in the tower (VisionZip, arXiv 2412.04467)."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, finite_tokens=True, needs_attention=False)
    batch, num, dim = tokens.shape
    check_input("cls_attn_heads", cls_attn_heads, (batch, None, num), tokens)
    check_input("keys", keys, (batch, num, None), tokens)
    check_input("cls_token", cls_token, (batch, dim), tokens)
    if bool((keys.norm(dim=-1) == 0).any()):
        raise ValueError("keys hold an all-zero key vector; VisionZip normalises keys and needs them non-zero")
    if contextual is not None and (not is_int(contextual) or not 0 <= contextual <= keep - 1):
        raise ValueError(f"contextual={contextual!r} must be an integer in [0, keep - 1 = {keep - 1}] "
                         "(the [CLS] row is always kept), or None for the default split")
    if keep >= num:
        return keep_all_tokens(tokens)
    num_ctx = default_contextual(keep) if contextual is None else int(contextual)
    num_dom = keep - num_ctx - 1  # dominant patches; the [CLS] row is the other dominant row
    device = tokens.device

    is_dominant = torch.zeros(batch, num, dtype=torch.bool, device=device)
    if num_dom:
        is_dominant.scatter_(1, cls_attn_heads.sum(dim=1).topk(num_dom, dim=1).indices, True)
    # A stable sort on the flag lists each row's remaining patches, then its dominant ones, both in raster order.
    order = torch.argsort(is_dominant.to(torch.int8), dim=1, stable=True)  # [B, N]
    remaining, dominant = order[:, :num - num_dom], order[:, num - num_dom:]  # [B, R], [B, D - 1]
    rows = torch.arange(batch, device=device)[:, None]
    parts = [cls_token[:, None], tokens[rows, dominant]]
    if num_ctx:
        parts.append(merge_contextual(tokens[rows, remaining], keys[rows, remaining], num_ctx))
    kept = torch.cat(parts, dim=1)  # [B, K, C]
    index = torch.full((batch, keep), NO_SOURCE_INDEX, dtype=torch.long, device=device)
    index[:, 1:1 + num_dom] = dominant
    return kept, index
