"""HoloV: holistic visual-token pruning by crops.

Paper: "Don't Just Chase 'Highlighted Tokens' in MLLMs: Revisiting Visual Holistic
Context Retention" (HoloV, NeurIPS 2025, arXiv 2510.02912). Attention-first pruners keep
many near-duplicate tokens of the same salient region; HoloV splits the tokens into
crops, scores each crop by attention plus a similarity-variance (diversity) term, spreads
the budget of K tokens over the crops by score and picks tokens inside each crop.

Two modes (see docs/holov.md):

- ``faithful`` (default) gives the kept tokens, their order and the output tensor of the
  authors' released function: 1-D raster chunks, floor-plus-remainder budget, raw
  attention inside a chunk in descending order, zero vectors when a chunk is given more
  than it holds. Differences: scores are computed in float32 whatever the input dtype and
  cosine similarities come from the raw Gram matrix (equal up to float32 rounding). Exact
  ties (frequent in float16) are ordered by the same torch.topk calls the released code
  makes (see docs/holov.md, "What faithful guarantees").
- ``improved`` keeps the same scores but cuts 2-D crops, water-fills the budget so exactly
  K real tokens are kept, and returns them in raster order. Its departures are the named
  options of ``holov_patches.config.IMPROVED_OPTIONS`` (crop_shape, rank_by, diversity_scale).

Unlike the released code, both modes run batched over images and crops (no Python loop
per crop or image) and return the kept positions.

The file reads top to bottom: 1. crops, 2. scores, 3. budget, 4. selection, 5. the
registered ``prune``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np
import torch

from holov_patches.config import MODES, check_alpha, default_num_crops, resolve_improved_options
from holov_patches.methods._contract import check_grid, check_pruner_inputs, is_int, square_grid
from holov_patches.registry import register_pruner


# ==============================================================================
# 1. Crops
#
# How HoloV cuts N visual tokens into crops, as one padded slot table.
#
# Every crop is a row of ``slot_index [C, n_max]`` holding its token positions in raster
# order; a crop with fewer than ``n_max`` tokens is padded (``valid`` False). One table
# layout serves both crop shapes, so scoring and selection run batched over all crops at
# once instead of looping over them as the released code does.
#
# The table depends only on integers (N, P, grid), so it is computed with numpy on the
# host and moved to the device in one copy per field: no device kernels, no Python loop.
# ==============================================================================


@dataclass(frozen=True)
class CropTable:
    slot_index: torch.Tensor  # [C, n_max] int64 token position; padded slots hold 0 (never selected)
    valid: torch.Tensor       # [C, n_max] bool, True for a real token
    valid_f: torch.Tensor     # [C, n_max] float32 copy of valid, for masked sums
    pair: torch.Tensor        # [C, n_max, n_max] float32, 1 for two different real tokens (S's kept entries)
    sizes: torch.Tensor       # [C] int64 tokens per crop, all >= 1
    sizes_f: torch.Tensor     # [C] float32 sizes
    sizes_host: list          # [C] the sizes as Python ints (no device sync to read them)
    contiguous: bool          # slots are exactly tokens 0..N-1 in order: a view replaces the gather
    blocks: Optional[Tuple[int, int, int, int]] = None  # (g_rows, h, g_cols, w) when every crop is an h x w block

    @property
    def num_crops(self) -> int:
        return self.slot_index.shape[0]

    @property
    def width(self) -> int:
        return self.slot_index.shape[1]


def _to_table(slot_index: np.ndarray, valid: np.ndarray, sizes: np.ndarray, contiguous: bool,
              device: torch.device, blocks: Optional[Tuple[int, int, int, int]] = None) -> CropTable:
    width = valid.shape[1]
    pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(width, dtype=bool)[None]    # [C, n_max, n_max]

    def put(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)

    return CropTable(slot_index=put(slot_index, torch.int64), valid=put(valid, torch.bool),
                     valid_f=put(valid, torch.float32), pair=put(pair, torch.float32),
                     sizes=put(sizes, torch.int64), sizes_f=put(sizes, torch.float32),
                     sizes_host=[int(n) for n in sizes], contiguous=contiguous,
                     blocks=blocks)


def raster_chunks(num_tokens: int, num_crops: int, device: torch.device) -> CropTable:
    """The released code's crops: contiguous runs of the flattened raster.

    P chunks of floor(N/P) tokens, the first N mod P one longer; empty chunks (P > N)
    are dropped, so there are C = min(P, N) chunks of N // C or N // C + 1 tokens."""
    chunks = min(num_crops, num_tokens)
    base, extra = divmod(num_tokens, chunks)
    width = base + (1 if extra else 0)
    crop = np.arange(chunks)
    sizes = base + (crop < extra)                                    # [C]
    starts = crop * base + np.minimum(crop, extra)                   # [C]
    slot = np.arange(width)
    valid = slot[None, :] < sizes[:, None]                           # [C, n_max]
    slot_index = (starts[:, None] + slot[None, :]) * valid           # [C, n_max], pads -> 0
    return _to_table(slot_index, valid, sizes, extra == 0, device)


def crop_grid_side(num_crops: int) -> int:
    """g for a g x g grid of crops: the integer nearest sqrt(P) (P=16 -> 4, P=8 -> 3, P=5 -> 2).

    sqrt(P) is never exactly k + 1/2 for an integer P, so the nearest integer is
    isqrt(P), or one more when P exceeds isqrt(P)^2 + isqrt(P)."""
    g = math.isqrt(num_crops)
    return max(1, g + 1 if num_crops > g * g + g else g)


def _bands(length: int, parts: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Split 0..length-1 into ``parts`` runs cut at ceil(b * length / parts): lengths differ by at most 1."""
    cuts = (np.arange(parts + 1) * length + parts - 1) // parts      # [parts + 1]
    return cuts[:-1], np.diff(cuts), -(-length // parts)             # starts, lengths, longest


def square_crops(grid: Tuple[int, int], num_crops: int, device: torch.device) -> CropTable:
    """Improved mode's crops: a g x g grid of rectangles on the rows x cols patch grid.

    g = crop_grid_side(P), capped at rows and at cols. Band b of rows spans
    [ceil(b*rows/g), ceil((b+1)*rows/g)), likewise for columns, so when g does not
    divide rows or cols the crops differ by at most one row or column; no crop is empty.
    Crop c = (row band) * g_cols + (column band), tokens in raster order inside it."""
    rows, cols = grid
    side = crop_grid_side(num_crops)
    g_rows, g_cols = min(side, rows), min(side, cols)
    row0, heights, h_max = _bands(rows, g_rows)
    col0, widths, w_max = _bands(cols, g_cols)
    i, j = np.arange(h_max), np.arange(w_max)
    row = row0[:, None] + i[None, :]                                 # [g_rows, h_max]
    col = col0[:, None] + j[None, :]                                 # [g_cols, w_max]
    token = row[:, None, :, None] * cols + col[None, :, None, :]     # [g_rows, g_cols, h_max, w_max]
    valid = (i[None, :] < heights[:, None])[:, None, :, None] & (j[None, :] < widths[:, None])[None, :, None, :]
    crops = g_rows * g_cols
    valid = valid.reshape(crops, h_max * w_max)                      # [C, n_max]
    slot_index = token.reshape(crops, h_max * w_max) * valid         # [C, n_max], pads -> 0
    sizes = (heights[:, None] * widths[None, :]).reshape(crops)      # [C]
    contiguous = g_cols == 1 and rows % g_rows == 0                  # full-width bands of equal height
    even = rows % g_rows == 0 and cols % g_cols == 0                 # equal blocks: a permute replaces the gather
    blocks = (g_rows, rows // g_rows, g_cols, cols // g_cols) if even else None
    return _to_table(slot_index, valid, sizes, contiguous, device, blocks)


# ==============================================================================
# 2. Scores
#
# HoloV token and crop scores, batched over images and crops.
#
# Per crop of n > 1 tokens (HoloV, arXiv 2510.02912, as the released code computes it):
# f_i = x_i / (|x_i| + 1e-6), S = F F^T with its diagonal set to 0,
# mean_i = sum_j S_ij / (n - 1), var_i = sum_j (S_ij - mean_i)^2 / (n - 1) over all n
# columns (the zeroed diagonal adds mean_i^2), a_i = 1000 * attn_i,
# scale = mean|a| / (mean|var| + 1e-6), token score = a + alpha * (var * scale), and the
# crop score is the mean token score.
#
# All crops are scored at once on the padded slot table: one batched matmul gives every
# crop's S, and masks keep padded slots out of every sum. Work is in float32 whatever
# the input dtype. Memory is at most one [B, C, n_max, D] float32 copy of the tokens and
# [B, C, n_max, n_max] similarities; never N x N x D.
# ==============================================================================


NORM_EPS = 1e-6
SCALE_EPS = 1e-6
ATTN_GAIN = 1e3


@dataclass(frozen=True)
class CropScores:
    attn: torch.Tensor   # [B, C, n_max] raw attention (float32), padded slots 0
    token: torch.Tensor  # [B, C, n_max] a + alpha * (var * scale), padded slots 0
    crop: torch.Tensor   # [B, C] crop score


def _to_slots(values: torch.Tensor, table: CropTable) -> torch.Tensor:
    """[B, N, ...] -> [B, C, n_max, ...] following the slot table (a view when it is contiguous)."""
    batch, rest = values.shape[0], values.shape[2:]
    if table.contiguous:
        return values.view(batch, table.num_crops, table.width, *rest)
    if table.blocks is not None:
        # Equal h x w blocks: one strided copy, about twice as fast on CPU as an index gather.
        g_rows, h, g_cols, w = table.blocks
        blocks = values.view(batch, g_rows, h, g_cols, w, *rest).transpose(2, 3)  # [B, g_rows, g_cols, h, w, ...]
        return blocks.reshape(batch, g_rows * g_cols, h * w, *rest)
    return values[:, table.slot_index]                                # [B, C, n_max, ...]


def _cosine_similarity(tokens: torch.Tensor, table: CropTable) -> torch.Tensor:
    """S_ij = f_i . f_j with f = x / (|x| + 1e-6), per crop: [B, C, n_max, n_max] float32.

    Computed as the Gram matrix of the raw tokens scaled by 1 / (|x_i| + 1e-6)(|x_j| + 1e-6),
    with the norms read off its diagonal. This equals the released code's normalise-then-
    multiply up to float32 rounding (~1e-7 relative) and reads the tokens once instead of
    writing a normalised [B, N, D] copy, which on CPU made scoring about 2x faster at B=8."""
    feats = _to_slots(tokens, table).float()                          # [B, C, n_max, D] (a view when contiguous fp32)
    gram = feats @ feats.transpose(-1, -2)                            # [B, C, n_max, n_max]
    inv = 1.0 / (gram.diagonal(dim1=-2, dim2=-1).sqrt() + NORM_EPS)   # [B, C, n_max] 1 / (|x| + 1e-6)
    return gram * inv[..., :, None] * inv[..., None, :]


def score_crops(tokens: torch.Tensor, cls_attn: torch.Tensor, table: CropTable, alpha: float,
                diversity_scale: str = "crop", single_token_raw: bool = True) -> CropScores:
    """Scores of every token and crop; tokens [B, N, D], cls_attn [B, N].

    ``diversity_scale="image"`` takes scale = mean|a| / (mean|var| + 1e-6) over the whole
    image instead of per crop (improved-mode option). ``single_token_raw`` is the
    released code's rule that a one-token crop scores its raw attention (not x1000);
    improved mode turns it off so that such a crop is scored like any other token (var 0)."""
    validf = table.valid_f                                            # [C, n_max]
    sizes = table.sizes_f                                             # [C]
    sim = _cosine_similarity(tokens, table)                            # [B, C, n_max, n_max]
    sim = sim * table.pair                                            # diagonal and padded pairs -> 0
    denom = (sizes - 1).clamp(min=1)[:, None]                         # [C, 1] n - 1
    mean = sim.sum(-1) / denom                                        # [B, C, n_max]
    dev = (sim - mean[..., None]) ** 2 * validf[:, None, :]           # [B, C, n_max, n_max], real columns only
    var = dev.sum(-1) / denom * validf                                # [B, C, n_max]

    attn = _to_slots(cls_attn.float(), table) * validf                # [B, C, n_max]
    gain = attn * ATTN_GAIN
    if diversity_scale == "image":
        count = float(tokens.shape[1])                                # the crops cover all N tokens
        mean_a = gain.abs().sum((1, 2)) / count                      # [B]
        mean_v = var.abs().sum((1, 2)) / count                       # [B]
        scale = (mean_a / (mean_v + SCALE_EPS))[:, None, None]       # [B, 1, 1]
    elif diversity_scale == "crop":
        mean_a = gain.abs().sum(-1) / sizes                          # [B, C]
        mean_v = var.abs().sum(-1) / sizes                           # [B, C]
        scale = (mean_a / (mean_v + SCALE_EPS))[..., None]           # [B, C, 1]
    else:
        raise ValueError(f"diversity_scale={diversity_scale!r} is not one of ('crop', 'image')")
    token = (gain + alpha * (var * scale)) * validf                   # [B, C, n_max]
    crop = token.sum(-1) / sizes                                      # [B, C]
    if single_token_raw:
        crop = torch.where(table.sizes == 1, attn[..., 0], crop)
    return CropScores(attn=attn, token=token, crop=crop)


# ==============================================================================
# 3. Budget
#
# How HoloV spreads the budget of K tokens over the crops, batched over images.
#
# ``released_allocation`` is the authors' rule: floor(K * w) per crop, and the remainder
# as one extra token each to the crops with the largest w. A crop may be given more than
# it holds (the released code then pads with zero vectors) and the remainder can exceed
# the number of crops (more zero vectors).
#
# ``waterfill_allocation`` is improved mode's rule: each crop gets min(size, lambda * w)
# with lambda chosen so that exactly K tokens are spent, i.e. what a saturated crop cannot
# use is re-distributed to the others in proportion to their scores, then the real-valued
# shares are rounded by largest remainder among crops that still have room.
# ==============================================================================


WEIGHT_EPS = 1e-6


def _descending_rank(values: torch.Tensor) -> torch.Tensor:
    """rank[b, c] = position of c when row b is sorted descending (ties: lower index first)."""
    order = torch.argsort(values, dim=-1, descending=True, stable=True)            # [B, C]
    positions = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)                  # [B, C]


def released_allocation(crop_scores: torch.Tensor, keep: int) -> torch.Tensor:
    """[B, C] crop scores -> [B, C] int64 tokens per crop, as the released code computes them.

    w = s / (sum s + 1e-6); alloc = floor(w * K); r = K - sum(alloc); if r > 0 the
    min(r, C) crops with the largest w get one more, picked by ``torch.topk(w, r)`` as the
    released code does: exact ties are common (a chunk's score is about (1 + alpha) x its
    mean attention, so chunks with equal attention values tie) and go where torch.topk puts
    them. One topk call per distinct r in the batch, on all the rows that share it."""
    weights = crop_scores / (crop_scores.sum(-1, keepdim=True) + WEIGHT_EPS)      # [B, C]
    alloc = torch.floor(weights * keep).long()                                     # [B, C]
    remainder = (keep - alloc.sum(-1)).clamp(min=0, max=weights.shape[-1])         # [B]; r <= 0 gives none
    rows_of: dict = {}
    for row, r in enumerate(remainder.tolist()):                                   # one device->host copy
        if r > 0:
            rows_of.setdefault(r, []).append(row)
    for r, rows in rows_of.items():
        index = torch.tensor(rows, device=weights.device)                           # [M]
        alloc[index[:, None], weights[index].topk(r, dim=-1).indices] += 1
    return alloc


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


# ==============================================================================
# 4. Selection
#
# Turn scores and per-crop budgets into kept positions, batched over images and crops.
# ==============================================================================


def _gather_tokens(tokens: torch.Tensor, kept_index: torch.Tensor, may_pad: bool) -> torch.Tensor:
    """Rows of tokens at kept_index [B, K] (exact copies, input dtype); index -1 gives a zero row."""
    rows = torch.arange(kept_index.shape[0], device=tokens.device)[:, None]          # [B, 1]
    kept = tokens[rows, kept_index.clamp(min=0)]                                       # [B, K, D]
    if not may_pad:
        return kept
    return torch.where((kept_index < 0)[..., None], torch.zeros((), dtype=kept.dtype, device=kept.device), kept)


def _topk_picks(values: torch.Tensor, table: CropTable, alloc: torch.Tensor) -> torch.Tensor:
    """[B, C, n_max] slot of each pick rank: for a chunk of n tokens given 0 < k < n, its first
    k ranks are ``torch.topk(chunk_values, k).indices`` on the chunk's own row of n values,
    the call the released code makes, so exact ties (many in float16) are ordered as there.

    Chunks are grouped by (n, k), and each group is one batched topk call on its [M, n] rows
    (the raster chunks' real slots are a prefix of their row). Other ranks are left in
    raster order: they are never taken."""
    batch, crops, width = values.shape
    picks = torch.arange(width, device=values.device).repeat(batch * crops, 1)        # [B*C, n_max]
    rows = values.reshape(batch * crops, width)
    sizes = table.sizes_host * batch                                                   # B*C ints, host side
    groups: dict = {}
    for row, (n, k) in enumerate(zip(sizes, alloc.reshape(-1).tolist())):             # one device->host copy
        if 0 < k < n:
            groups.setdefault((n, k), []).append(row)
    for (n, k), members in groups.items():
        index = torch.tensor(members, device=values.device)                           # [M]
        picks[index, :k] = rows[index, :n].topk(k, dim=-1).indices
    return picks.view(batch, crops, width)


def _select_released(attn: torch.Tensor, table: CropTable, alloc: torch.Tensor, keep: int) -> torch.Tensor:
    """Kept positions [B, K] in the released code's order, -1 for a zero pad.

    ``attn`` [B, C, n_max] in the dtype the released code sees (the model's). Each slot gets
    a pick rank inside its chunk: its raster rank when the chunk is taken whole (alloc >=
    size), else its torch.topk rank (:func:`_topk_picks`). Slots with rank < min(alloc, size)
    are taken; reading them in (chunk, rank) order reproduces the released concatenation,
    which is then cut or zero-padded to K."""
    batch, crops, width = attn.shape
    slot = torch.arange(width, device=attn.device)
    by_attention = _topk_picks(attn, table, alloc)
    whole = alloc >= table.sizes                                                         # [B, C]
    sequence = torch.where(whole[..., None], slot.expand(batch, crops, width), by_attention)  # [B, C, n_max] slot per rank
    taken = slot < torch.minimum(alloc.clamp(min=0), table.sizes)[..., None]           # [B, C, n_max] by rank
    position = table.slot_index.expand(batch, crops, width).gather(-1, sequence)       # [B, C, n_max] token per rank
    flat = crops * width
    order_key = torch.where(taken.reshape(batch, flat), torch.arange(flat, device=attn.device), flat)  # [B, C*n_max]
    first = torch.sort(order_key, dim=-1).values[:, :keep]                             # [B, K] taken ranks in order
    kept = position.reshape(batch, flat).gather(1, first.clamp(max=flat - 1))
    return torch.where(first < flat, kept, -1)


def _select_within_crops(rank_score: torch.Tensor, table: CropTable, alloc: torch.Tensor, num_tokens: int,
                         keep: int) -> torch.Tensor:
    """Kept positions [B, K] in raster order: the alloc best tokens of each crop by rank_score (alloc <= size)."""
    batch, crops, width = rank_score.shape
    slot = torch.arange(width, device=rank_score.device)
    best_first = torch.argsort(rank_score.masked_fill(~table.valid, -torch.inf), dim=-1, descending=True, stable=True)
    position = table.slot_index.expand(batch, crops, width).gather(-1, best_first)   # [B, C, n_max] token per rank
    taken = slot < alloc[..., None]                                                    # [B, C, n_max]
    key = torch.where(taken, position, num_tokens).reshape(batch, crops * width)      # [B, C*n_max], N = not taken
    return torch.sort(key, dim=-1).values[:, :keep]                                    # exactly K distinct, increasing


def _faithful(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, num_crops: int, alpha: float) -> torch.Tensor:
    table = raster_chunks(tokens.shape[1], num_crops, tokens.device)
    scores = score_crops(tokens, cls_attn, table, alpha, diversity_scale="crop", single_token_raw=True)
    alloc = released_allocation(scores.crop, keep)                                    # [B, C]
    return _select_released(_to_slots(cls_attn, table), table, alloc, keep)          # ranks on the input dtype


def _improved(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, num_crops: int, alpha: float,
              grid: Optional[Tuple[int, int]], crop_shape: str, rank_by: str, diversity_scale: str) -> torch.Tensor:
    num_tokens = tokens.shape[1]
    if crop_shape == "square":
        if grid is None:
            raise ValueError(f"mode='improved' with crop_shape='square' needs grid=(rows, cols) with rows * cols == N; "
                             f"N = {num_tokens} is not a perfect square, so pass the grid (or crop_shape='raster')")
        table = square_crops(grid, num_crops, tokens.device)
    else:
        table = raster_chunks(num_tokens, num_crops, tokens.device)
    scores = score_crops(tokens, cls_attn, table, alpha, diversity_scale=diversity_scale, single_token_raw=False)
    alloc = waterfill_allocation(scores.crop, table.sizes, keep)                      # [B, C]
    rank_score = scores.token if rank_by == "combined" else scores.attn
    return _select_within_crops(rank_score, table, alloc, num_tokens, keep)


@register_pruner("holov")
def prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, num_crops: Optional[int] = None,
          mode: str = "faithful", grid: Optional[Tuple[int, int]] = None, alpha: float = 0.09,
          **improved_options) -> Tuple[torch.Tensor, torch.Tensor]:
    """HoloV crop-wise pruning (arXiv 2510.02912): tokens [B, N, D], cls_attn [B, N] -> ([B, K, D], [B, K] int64).

    ``num_crops`` P defaults to max(1, floor(1024/576 * N / K)) (16 for N=576, K=64).
    ``grid`` (rows, cols) defaults to the square sqrt(N) grid when N is a perfect square.
    ``improved_options`` (improved mode only): crop_shape, rank_by, diversity_scale.
    K >= N keeps all N tokens in raster order. The kept tokens are exact copies of input
    rows in the input dtype; kept_index is -1 only for a faithful-mode zero pad.
    """
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, finite_tokens=True)
    if num_crops is not None and (not is_int(num_crops) or num_crops < 1):
        raise ValueError(f"num_crops={num_crops!r} must be an integer >= 1 (or None for max(1, floor(1024/576 * N / K)))")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    alpha = check_alpha(alpha)
    batch, num_tokens, _ = tokens.shape
    grid = check_grid(grid, num_tokens) or square_grid(num_tokens)
    options = resolve_improved_options(mode, improved_options)
    if keep >= num_tokens:
        kept_index = torch.arange(num_tokens, device=tokens.device).expand(batch, num_tokens).contiguous()
        return tokens.clone(), kept_index
    crops = num_crops if num_crops is not None else default_num_crops(num_tokens, keep)
    if mode == "faithful":
        kept_index = _faithful(tokens, cls_attn, keep, crops, alpha)
    else:
        kept_index = _improved(tokens, cls_attn, keep, crops, alpha, grid, **options)
    return _gather_tokens(tokens, kept_index, may_pad=mode == "faithful"), kept_index
