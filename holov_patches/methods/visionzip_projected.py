"""VisionZip's idea on projected tokens: keep the most-attended tokens and merge the rest
into a few contextual tokens, after the projector.

This is NOT the authors' VisionZip (that is ``visionzip``, which runs inside the vision
tower on its hidden states and attention keys). Its use: families whose tower output we
cannot prune before the projector (LLaVA-NeXT's multi-crop layout, Qwen2.5-VL's 2x2
merger) still get a dominant + contextual pruner from the projected tokens and [CLS] row
alone, and it isolates how much of VisionZip's result comes from working in the tower.

Paper: "VisionZip: Longer is Better but Not Necessary in Vision Language Models"
(Yang et al., CVPR 2025, arXiv 2412.04467). Attention-first selection alone drops the
background; VisionZip keeps K - C "dominant" tokens by [CLS] attention and folds every
other token into C "contextual" tokens so that the background survives in averaged form.

Algorithm, for each image:
1. Dominant tokens: the K - C tokens with the largest [CLS] attention.
2. The R = N - (K - C) remaining tokens, in raster order, are split into C targets and
   the rest: the targets are the remaining tokens at local positions 0, s, 2s, ...
   (the first C of them) with s = max(1, R // C), the authors' "evenly spaced" rule.
3. Every non-target remaining token joins the target it is most similar to (cosine).
4. Each contextual token is the mean of its group (the target and the tokens that
   joined it); ``merge="target_plus_mean"`` gives the authors' formula instead:
   target + mean of the tokens that joined it (the target itself when none joined).

Split rule: C = max(1, floor(K * 10 / 64 + 1/2)), the paper's 54 + 10 ratio for K = 64;
it also gives the paper's 108 + 20 (K = 128) and 162 + 30 (K = 192); K = 16 gives 13 + 3
and K = 1 gives one contextual token that is the mean of the whole image. Override with
``contextual=C`` (0 <= C <= K; C = 0 is ``cls_topk``).

Output: kept tokens in raster order. A contextual token is not a row of the input: its
``kept_index`` is its target's position and it sits at that position in the raster
order (the authors append the contextual tokens after the dominant ones).

How ours differs from the authors' code: they merge the vision tower's hidden states
before the projector and measure similarity on that layer's attention keys; this pruner
sees only the projected tokens, so both the grouping (cosine on projected tokens) and the
averaging happen after the projector (the projector is an MLP, so the mean of projected
tokens is not the projection of the mean). The default merge is the group mean rather
than their target + mean, and the contextual tokens keep their targets' positions.
Everything is batched (no loop over images or tokens); sums are taken in float32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from holov_patches.methods._contract import (
    check_choice, check_pruner_inputs, gather_tokens, is_int, keep_all_tokens)
from holov_patches.registry import register_pruner

MERGES = ("mean", "target_plus_mean")
PAPER_SPLIT = (54, 10)  # (dominant, contextual) tokens for K = 64


def default_contextual(keep: int) -> int:
    """Contextual tokens C for a budget K: round(K * 10 / 64) (halves up), at least 1."""
    dom, ctx = PAPER_SPLIT
    total = dom + ctx
    return max(1, (2 * ctx * keep + total) // (2 * total))  # floor(K * ctx / total + 1/2) in integers


def evenly_spaced_targets(num_remaining: int, contextual: int) -> torch.Tensor:
    """Local positions [C] of the targets among R remaining tokens: 0, s, 2s, ... with s = max(1, R // C)."""
    step = max(1, num_remaining // contextual)
    return torch.arange(0, num_remaining, step)[:contextual]


@register_pruner("visionzip_projected")
def prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, *, grid: Optional[Sequence[int]] = None,
          contextual: Optional[int] = None, merge: str = "mean"):
    """VisionZip-style dominant + merged contextual tokens on the projected tokens (not the authors' in-tower method)."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, finite_tokens=True)
    check_choice("merge", merge, MERGES)
    if contextual is not None and (not is_int(contextual) or not 0 <= contextual <= keep):
        raise ValueError(f"contextual={contextual!r} must be an integer in [0, keep={keep}] (or None for the default split)")
    batch, num, dim = tokens.shape
    if keep >= num:
        return keep_all_tokens(tokens)
    num_ctx = default_contextual(keep) if contextual is None else int(contextual)
    num_dom = keep - num_ctx
    num_rem = num - num_dom  # > num_ctx because keep < num
    device = tokens.device

    is_dominant = torch.zeros(batch, num, dtype=torch.bool, device=device)
    if num_dom:
        is_dominant.scatter_(1, cls_attn.topk(num_dom, dim=1).indices.to(device), True)
    # A stable sort on the flag lists each row's remaining tokens, then its dominant ones, both in raster order.
    order = torch.argsort(is_dominant.to(torch.int8), dim=1, stable=True)  # [B, N]
    remaining, dominant = order[:, :num_rem], order[:, num_rem:]  # [B, R], [B, K - C]
    if num_ctx == 0:
        return gather_tokens(tokens, dominant), dominant

    local_targets = evenly_spaced_targets(num_rem, num_ctx).to(device)  # [C]
    is_target = torch.zeros(num_rem, dtype=torch.bool, device=device)
    is_target[local_targets] = True
    target_pos = remaining[:, local_targets]  # [B, C]
    member_pos = remaining[:, ~is_target]  # [B, R - C]

    feats = tokens.float()
    target_x, member_x = gather_tokens(feats, target_pos), gather_tokens(feats, member_pos)  # [B, C, D], [B, R - C, D]
    similarity = F.normalize(member_x, dim=-1, eps=1e-6) @ F.normalize(target_x, dim=-1, eps=1e-6).transpose(1, 2)
    group = similarity.argmax(dim=2)  # [B, R - C]: the target each member joins
    sums = torch.zeros_like(target_x).scatter_add_(1, group.unsqueeze(-1).expand(-1, -1, dim), member_x)  # [B, C, D]
    counts = torch.zeros(batch, num_ctx, device=device).scatter_add_(
        1, group, torch.ones(group.shape, device=device)).unsqueeze(-1)  # [B, C, 1]
    if merge == "mean":
        merged = (target_x + sums) / (counts + 1.0)
    else:
        merged = target_x + sums / counts.clamp(min=1.0)

    index = torch.cat([dominant, target_pos], dim=1)  # [B, K]
    kept = torch.cat([gather_tokens(tokens, dominant), merged.to(tokens.dtype)], dim=1)  # [B, K, D]
    index, perm = index.sort(dim=1)  # raster order, contextual tokens at their targets' positions
    return gather_tokens(kept, perm), index
