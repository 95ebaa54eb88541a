"""How HoloV spreads the budget of K tokens over the crops, batched over images.

``released_allocation`` is the authors' rule: floor(K * w) per crop, and the remainder
as one extra token each to the crops with the largest w. A crop may be given more than
it holds (the released code then pads with zero vectors) and the remainder can exceed
the number of crops (more zero vectors).

``waterfill_allocation`` is improved mode's rule: each crop gets min(size, lambda * w)
with lambda chosen so that exactly K tokens are spent, i.e. what a saturated crop cannot
use is re-distributed to the others in proportion to their scores, then the real-valued
shares are rounded by largest remainder among crops that still have room.
"""
from __future__ import annotations

import torch

WEIGHT_EPS = 1e-6


def _descending_rank(values: torch.Tensor) -> torch.Tensor:
    """rank[b, c] = position of c when row b is sorted descending (ties: lower index first)."""
    order = torch.argsort(values, dim=-1, descending=True, stable=True)            # [B, C]
    positions = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)                  # [B, C]


def released_allocation(crop_scores: torch.Tensor, keep: int) -> torch.Tensor:
    """[B, C] crop scores -> [B, C] int64 tokens per crop, as the released code computes them.

    w = s / (sum s + 1e-6); alloc = floor(w * K); r = K - sum(alloc); if r > 0 the
    min(r, C) crops with the largest w get one more (torch.topk picks them in the
    released code; ties here go to the lower crop index)."""
    weights = crop_scores / (crop_scores.sum(-1, keepdim=True) + WEIGHT_EPS)      # [B, C]
    alloc = torch.floor(weights * keep).long()                                     # [B, C]
    remainder = keep - alloc.sum(-1, keepdim=True)                                 # [B, 1]
    bonus = _descending_rank(weights) < remainder.clamp(min=0)                     # [B, C]; r <= 0 gives none
    return alloc + bonus.long()


def _proportional_shares(weights: torch.Tensor, caps: torch.Tensor, keep: int) -> torch.Tensor:
    """Real shares x = min(cap, lambda * w) summing to K; needs the positive-weight crops to hold >= K tokens.

    f(lambda) = sum_c min(cap_c, lambda * w_c) is increasing and piecewise linear with
    breakpoints t_c = cap_c / w_c. With the crops sorted by t, lambda_j = (K - caps of
    crops before j) / (weights of crops j..) is the solution if the crops before j are
    exactly the full ones, which holds for the first j with lambda_j <= t_j."""
    breaks, order = torch.sort(caps / weights, dim=-1)                             # [B, C]; w = 0 -> inf, last
    caps_s = caps.gather(-1, order)                                                # [B, C]
    full_before = caps_s.cumsum(-1) - caps_s                                       # [B, C]
    weight_from = weights.gather(-1, order).flip(-1).cumsum(-1).flip(-1)          # [B, C]
    lam = (keep - full_before) / weight_from                                       # [B, C] lambda_j
    first = torch.argmax((lam <= breaks).int(), dim=-1, keepdim=True)              # [B, 1]
    return torch.minimum(caps, lam.gather(-1, first) * weights)                    # [B, C]


def waterfill_allocation(crop_scores: torch.Tensor, sizes: torch.Tensor, keep: int) -> torch.Tensor:
    """[B, C] crop scores, [C] crop sizes -> [B, C] int64 allocation, 0 <= alloc <= size, summing to K.

    Needs K <= sum(sizes). Negative scores count as 0. When the crops with a positive
    score hold fewer than K tokens (all scores 0, say), those crops are kept whole and
    the rest of the budget goes to the zero-score crops in proportion to their sizes, so
    no image ever gets a zero vector. That case reuses the same water-fill with weights
    N * size (positive crops) and size (the others): lambda >= 1/N there, so the
    positive crops saturate and the others share the rest by size."""
    weights = crop_scores.double().clamp(min=0)                                    # [B, C] float64: exact enough to round
    caps = sizes.double().expand_as(weights)                                       # [B, C]
    positive = weights > 0
    short = (caps * positive).sum(-1, keepdim=True) < keep                         # [B, 1]
    fallback = caps * (1 + positive * (caps.sum(-1, keepdim=True) - 1))           # N * size or size
    shares = _proportional_shares(torch.where(short, fallback, weights), caps, keep)
    # Largest remainder: r = K - sum(floor) < (number of crops with room) + rounding error,
    # so the r crops with room and the largest fractional parts absorb it without overflow.
    base = torch.floor(shares)
    remainder = keep - base.sum(-1, keepdim=True)                                  # [B, 1]
    fraction = torch.where(base < caps, shares - base, -1.0)                       # full crops rank last
    return base.long() + (_descending_rank(fraction) < remainder).long()
