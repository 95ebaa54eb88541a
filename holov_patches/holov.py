"""HoloV: holistic visual-token pruning by crops.

Paper: "Don't Just Chase 'Highlighted Tokens' in MLLMs: Revisiting Visual Holistic
Context Retention" (HoloV, NeurIPS 2025, arXiv 2510.02912). Attention-first pruners keep
many near-duplicate tokens of the same salient region; HoloV splits the tokens into
crops, scores each crop by attention plus a similarity-variance (diversity) term, spreads
the budget of K tokens over the crops by score and picks tokens inside each crop.

Two modes (see docs/holov.md and shared/HOLOV_SPEC.md):

- ``faithful`` (default) gives the kept tokens, their order and the output tensor of the
  authors' released function: 1-D raster chunks, floor-plus-remainder budget, raw
  attention inside a chunk in descending order, zero vectors when a chunk is given more
  than it holds. Differences: scores are computed in float32 whatever the input dtype,
  cosine similarities come from the raw Gram matrix (equal up to float32 rounding), and
  exact ties (equal weights or equal attention) go to the lower index where the released
  code leaves them to torch.topk.
- ``improved`` keeps the same scores but cuts 2-D crops, water-fills the budget so exactly
  K real tokens are kept, and returns them in raster order. Its departures are the named
  options of ``holov_patches._holov_options`` (crop_shape, rank_by, diversity_scale).

Unlike the released code, both modes run batched over images and crops (no Python loop
per crop or image) and return the kept positions.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from holov_patches._holov_budget import released_allocation, waterfill_allocation
from holov_patches._holov_checks import check_alpha, check_grid, check_keep, check_mode, check_num_crops, check_tensors
from holov_patches._holov_crops import CropTable, raster_chunks, square_crops
from holov_patches._holov_options import resolve_improved_options
from holov_patches._holov_scores import score_crops
from holov_patches.config import default_num_crops
from holov_patches.registry import register_pruner


def _gather_tokens(tokens: torch.Tensor, kept_index: torch.Tensor, may_pad: bool) -> torch.Tensor:
    """Rows of tokens at kept_index [B, K] (exact copies, input dtype); index -1 gives a zero row."""
    rows = torch.arange(kept_index.shape[0], device=tokens.device)[:, None]          # [B, 1]
    kept = tokens[rows, kept_index.clamp(min=0)]                                       # [B, K, D]
    if not may_pad:
        return kept
    return torch.where((kept_index < 0)[..., None], torch.zeros((), dtype=kept.dtype, device=kept.device), kept)


def _select_released(attn: torch.Tensor, table: CropTable, alloc: torch.Tensor, keep: int) -> torch.Tensor:
    """Kept positions [B, K] in the released code's order, -1 for a zero pad.

    Each slot gets a pick rank inside its chunk: its raster rank when the chunk is taken
    whole (alloc >= size), else its rank by descending attention. Slots with rank <
    min(alloc, size) are taken; reading them in (chunk, rank) order reproduces the
    released concatenation, which is then cut or zero-padded to K."""
    batch, crops, width = attn.shape
    slot = torch.arange(width, device=attn.device)
    by_attention = torch.argsort(attn.masked_fill(~table.valid, -torch.inf), dim=-1, descending=True, stable=True)
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
    return _select_released(scores.attn, table, alloc, keep)


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
    check_tensors(tokens, cls_attn)
    keep = check_keep(keep)
    num_crops = check_num_crops(num_crops)
    mode = check_mode(mode)
    alpha = check_alpha(alpha)
    batch, num_tokens, _ = tokens.shape
    grid = check_grid(grid, num_tokens)
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
