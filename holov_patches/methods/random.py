"""Keep K visual tokens chosen uniformly at random: the content-blind floor every pruner
must beat.

Paper: no single paper owns it; it is the random-pruning control used across the
token-pruning literature, e.g. in FasterVLM ("[CLS] Attention is All You Need for
Training-Free Visual Token Pruning", arXiv 2412.01818) and DivPrune (arXiv 2503.02175).

How ours is defined: the subset is a function of ``(seed, N, K)`` only, drawn with a
local ``torch.Generator`` on the CPU (no global RNG state is read or changed, and the
same seed gives the same positions on every device). Every image of a batch therefore
gets the same positions: each one is still a uniform random K-subset, and an image's
picks do not depend on which other images share its batch. Vary ``seed`` to draw
another subset. Kept tokens are returned in raster order.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from holov_patches.methods._contract import check_pruner_inputs, gather_tokens, is_int, keep_all_tokens
from holov_patches.registry import register_pruner

_MAX_SEED = 2**63 - 1


@register_pruner("random", needs=())
def prune(tokens: torch.Tensor, cls_attn: Optional[torch.Tensor], keep: int, *, grid: Optional[Sequence[int]] = None,
          seed: int = 0):
    """Uniform random K visual tokens per image (seeded, local generator), kept in raster order."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, needs_attention=False)
    if not is_int(seed) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**63 - 1]")
    batch, num, _ = tokens.shape
    if keep >= num:
        return keep_all_tokens(tokens)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    picks = torch.randperm(num, generator=generator)[:keep].sort().values  # [K]
    index = picks.to(tokens.device).expand(batch, keep).contiguous()  # [B, K]
    return gather_tokens(tokens, index), index
