"""What every pre-LLM pruner shares: the input checks of the one signature and the small
tensor helpers around it.

The signature (see :mod:`holov_patches.registry`)::

    pruner(tokens [B, N, D], cls_attn [B, N], keep, *, grid=None, **options)
        -> (kept_tokens [B, K, D], kept_index [B, K] int64)

A method that declares more inputs (keys, a [CLS] token, text) checks them with
:func:`check_input`.

Bad input raises ``ValueError`` naming the value and what is accepted, before any work.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

import torch


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is not a token count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_keep(keep: Any) -> int:
    if not is_int(keep) or keep < 1:
        raise ValueError(f"keep={keep!r} must be an integer >= 1 (tokens kept per image)")
    return int(keep)


def check_grid(grid: Any, num_tokens: int) -> Optional[Tuple[int, int]]:
    """(rows, cols) with rows * cols == N, or None when not given."""
    if grid is None:
        return None
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(is_int(g) and g >= 1 for g in grid)
            or grid[0] * grid[1] != num_tokens):
        raise ValueError(f"grid={grid!r} must be (rows, cols) of integers >= 1 with rows * cols == N = {num_tokens}")
    return int(grid[0]), int(grid[1])


def square_grid(num_tokens: int) -> Optional[Tuple[int, int]]:
    """The sqrt(N) x sqrt(N) grid when N is a perfect square, else None."""
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else None


def check_choice(name: str, value: Any, allowed: Sequence) -> None:
    """Raise ``ValueError`` naming ``value`` and the allowed values when it is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {tuple(allowed)}")


def check_pruner_inputs(tokens: torch.Tensor, cls_attn: Optional[torch.Tensor], keep,
                        grid: Optional[Sequence[int]] = None, *, finite_tokens: bool = False,
                        needs_attention: bool = True) -> int:
    """Raise ``ValueError`` unless the inputs follow the pre-LLM pruner contract; returns ``int(keep)``.

    tokens [B, N, D] floating point with B, N >= 1; cls_attn [B, N] floating point, finite,
    on the tokens' device; keep an int >= 1 (bools rejected); grid ``None`` or (rows, cols)
    with rows * cols == N. ``finite_tokens`` also rejects NaN/inf tokens, for methods whose
    choice depends on the token features (a NaN feature would silently corrupt every score).
    A method that does not declare ``cls_attn`` passes ``needs_attention=False``: then
    ``cls_attn`` may be None (a given row is still checked)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a [B, N, D] tensor, got {shape}")
    if not tokens.is_floating_point():
        raise ValueError(f"tokens must be floating point, got dtype {tokens.dtype}")
    batch, num, _ = tokens.shape
    if batch < 1 or num < 1:
        raise ValueError(f"tokens {tuple(tokens.shape)} must have B >= 1 images and N >= 1 tokens")
    if cls_attn is None and not needs_attention:
        return _check_rest(tokens, keep, grid, finite_tokens)
    if not isinstance(cls_attn, torch.Tensor) or tuple(cls_attn.shape) != (batch, num):
        shape = tuple(cls_attn.shape) if isinstance(cls_attn, torch.Tensor) else type(cls_attn).__name__
        raise ValueError(f"cls_attn shape {shape} must be [B, N] = {(batch, num)} to match tokens")
    if not cls_attn.is_floating_point():
        raise ValueError(f"cls_attn must be floating point, got dtype {cls_attn.dtype}")
    if cls_attn.device != tokens.device:
        raise ValueError(f"cls_attn is on {cls_attn.device} but tokens are on {tokens.device}; put both on one device")
    bad = ~torch.isfinite(cls_attn)
    if bool(bad.any()):
        raise ValueError(f"cls_attn contains a non-finite value ({cls_attn[bad][0].item()}) at {int(bad.sum())} "
                         "position(s); attention must be finite")
    return _check_rest(tokens, keep, grid, finite_tokens)


def _check_rest(tokens: torch.Tensor, keep, grid, finite_tokens: bool) -> int:
    keep = check_keep(keep)
    check_grid(grid, tokens.shape[1])
    if finite_tokens:
        bad = ~torch.isfinite(tokens)
        if bool(bad.any()):
            raise ValueError(f"tokens hold {int(bad.sum())} NaN/inf value(s); this method compares token features "
                             "and needs them finite")
    return keep


def keep_all_tokens(tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The K >= N case of every pruner: all N tokens, in raster order."""
    batch, num, _ = tokens.shape
    index = torch.arange(num, device=tokens.device).expand(batch, num).contiguous()  # [B, N]
    return tokens.clone(), index


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D] gathered at index [B, K] -> [B, K, D] (same dtype)."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def topk_raster(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions [B, K] of the K largest scores per row, sorted ascending (raster order)."""
    return scores.topk(keep, dim=1).indices.sort(dim=1).values


def check_input(name: str, value: Any, shape: Sequence[Optional[int]], like: torch.Tensor, *, finite: bool = True) -> torch.Tensor:
    """A declared extra input: a floating tensor of ``shape`` (None = any size) on ``like``'s device."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape {tuple(shape)}, got {type(value).__name__}")
    if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {tuple('*' if s is None else s for s in shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {value.dtype}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but tokens are on {like.device}; put both on one device")
    if finite and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN/inf values; it must be finite")
    return value
