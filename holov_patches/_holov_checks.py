"""Argument checks for the HoloV pruner: bad input raises ValueError naming the value and what is accepted."""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import torch

from holov_patches.config import MODES


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_tensors(tokens: Any, cls_attn: Any) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or not tokens.is_floating_point():
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a floating-point tensor [B, N, D], got {shape}")
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens {tuple(tokens.shape)} must have B >= 1 images and N >= 1 tokens")
    if not isinstance(cls_attn, torch.Tensor) or not cls_attn.is_floating_point():
        raise ValueError(f"cls_attn must be a floating-point tensor [B, N], got {cls_attn!r:.80}")
    if tuple(cls_attn.shape) != tuple(tokens.shape[:2]):
        raise ValueError(f"cls_attn shape {tuple(cls_attn.shape)} must be [B, N] = {tuple(tokens.shape[:2])} to match tokens")
    if cls_attn.device != tokens.device:
        raise ValueError(f"cls_attn is on {cls_attn.device} but tokens are on {tokens.device}; put both on one device")
    if not bool(torch.isfinite(cls_attn).all()):
        bad = cls_attn[~torch.isfinite(cls_attn)][0].item()
        raise ValueError(f"cls_attn contains a non-finite value ({bad}); attention must be finite")


def check_keep(keep: Any) -> int:
    if not _is_int(keep) or keep < 1:
        raise ValueError(f"keep={keep!r} must be an integer >= 1 (tokens kept per image)")
    return int(keep)


def check_num_crops(num_crops: Any) -> Optional[int]:
    if num_crops is None:
        return None
    if not _is_int(num_crops) or num_crops < 1:
        raise ValueError(f"num_crops={num_crops!r} must be an integer >= 1 (or None for max(1, floor(1024/576 * N / K)))")
    return int(num_crops)


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    return mode


def check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number >= 0")
    return float(alpha)


def check_grid(grid: Any, num_tokens: int) -> Optional[Tuple[int, int]]:
    """(rows, cols) with rows * cols == N; None gives the square sqrt(N) grid when N is a perfect square."""
    if grid is None:
        side = math.isqrt(num_tokens)
        return (side, side) if side * side == num_tokens else None
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid)
            or grid[0] * grid[1] != num_tokens):
        raise ValueError(f"grid={grid!r} must be (rows, cols) of integers >= 1 with rows * cols == N = {num_tokens}")
    return int(grid[0]), int(grid[1])
