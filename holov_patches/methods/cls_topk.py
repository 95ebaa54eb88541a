"""Keep the K visual tokens the vision tower's [CLS] query attends to most.

Paper: "[CLS] Attention is All You Need for Training-Free Visual Token Pruning: Make VLM
Inference Faster" (Zhang et al., arXiv 2412.01818), released as FasterVLM. It is the
attention-first baseline HoloV argues against: at small K every kept token can land on
the one salient object.

How ours differs from the authors' code: the selection is the same (top-K of the
head-averaged [CLS] attention of the layer LLaVA feeds the projector, kept tokens in
raster order, since their code turns the top-K into a boolean mask over the patches).
Their code prunes inside LLaVA's ``encode_images`` and needs eager attention for the
whole CLIP tower; here the pruner is a pure function of (tokens, cls_attn) and the [CLS]
row is computed by the model adapter.

The shared input checks of the baseline pruners (``check_pruner_inputs``,
``keep_all_tokens``, ``gather_tokens``) live here because this is the reference pruner
the others build on (VisionZip's dominant tokens are exactly this selection).
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch

from holov_patches.registry import register_pruner


def is_int(value) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is not a token count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_pruner_inputs(tokens: torch.Tensor, cls_attn: torch.Tensor, keep, grid: Optional[Sequence[int]] = None,
                        *, finite_tokens: bool = False) -> int:
    """Raise ``ValueError`` unless the inputs follow the pre-LLM pruner contract; returns ``int(keep)``.

    tokens [B, N, D] floating point, cls_attn [B, N] floating point without NaN/inf,
    keep an int >= 1 (bools rejected), grid ``None`` or (rows, cols) with rows * cols == N.
    ``finite_tokens`` also rejects NaN/inf tokens, for methods whose choice depends on
    the token features (a NaN feature would silently corrupt every distance)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a [B, N, D] tensor, got {shape}")
    if not tokens.is_floating_point():
        raise ValueError(f"tokens must be floating point, got dtype {tokens.dtype}")
    batch, num, _ = tokens.shape
    if num < 1:
        raise ValueError(f"tokens must hold at least one visual token, got N={num}")
    if not isinstance(cls_attn, torch.Tensor) or tuple(cls_attn.shape) != (batch, num):
        shape = tuple(cls_attn.shape) if isinstance(cls_attn, torch.Tensor) else type(cls_attn).__name__
        raise ValueError(f"cls_attn must have shape [B, N] = {(batch, num)} to match tokens, got {shape}")
    if not cls_attn.is_floating_point():
        raise ValueError(f"cls_attn must be floating point, got dtype {cls_attn.dtype}")
    if not bool(torch.isfinite(cls_attn).all()):
        raise ValueError(f"cls_attn holds {int((~torch.isfinite(cls_attn)).sum())} NaN/inf value(s); it must be finite")
    if not is_int(keep) or keep < 1:
        raise ValueError(f"keep={keep!r} must be an integer >= 1")
    if grid is not None:
        if (not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(is_int(g) and g >= 1 for g in grid)
                or grid[0] * grid[1] != num):
            raise ValueError(f"grid={grid!r} must be (rows, cols) of positive ints with rows * cols == N = {num}")
    if finite_tokens and not bool(torch.isfinite(tokens).all()):
        raise ValueError("tokens hold NaN/inf values; this method compares token features and needs them finite")
    return int(keep)


def check_choice(name: str, value, allowed: Sequence) -> None:
    """Raise ``ValueError`` naming ``value`` and the allowed values when it is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {tuple(allowed)}")


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


@register_pruner("cls_topk")
def prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, *, grid: Optional[Sequence[int]] = None):
    """Top-K visual tokens by [CLS] attention (FasterVLM, arXiv 2412.01818), kept in raster order."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid)
    if keep >= tokens.shape[1]:
        return keep_all_tokens(tokens)
    index = topk_raster(cls_attn, keep).to(tokens.device)  # [B, K]
    return gather_tokens(tokens, index), index

