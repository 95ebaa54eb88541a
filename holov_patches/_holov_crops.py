"""How HoloV cuts N visual tokens into crops, as one padded slot table.

Every crop is a row of ``slot_index [C, n_max]`` holding its token positions in raster
order; a crop with fewer than ``n_max`` tokens is padded (``valid`` False). One table
layout serves both crop shapes, so scoring and selection run batched over all crops at
once instead of looping over them as the released code does.

The table depends only on integers (N, P, grid), so it is computed with numpy on the
host and moved to the device in one copy per field: no device kernels, no Python loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch


@dataclass(frozen=True)
class CropTable:
    slot_index: torch.Tensor  # [C, n_max] int64 token position; padded slots hold 0 (never selected)
    valid: torch.Tensor       # [C, n_max] bool, True for a real token
    valid_f: torch.Tensor     # [C, n_max] float32 copy of valid, for masked sums
    pair: torch.Tensor        # [C, n_max, n_max] float32, 1 for two different real tokens (S's kept entries)
    sizes: torch.Tensor       # [C] int64 tokens per crop, all >= 1
    sizes_f: torch.Tensor     # [C] float32 sizes
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
                     sizes=put(sizes, torch.int64), sizes_f=put(sizes, torch.float32), contiguous=contiguous,
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
