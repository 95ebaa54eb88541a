"""Keep the K visual tokens that are most different from each other (greedy max-min
diversity).

Paper: "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models"
(Alvar et al., CVPR 2025, arXiv 2503.02175). It casts pruning as the Max-Min Diversity
Problem (choose K tokens maximising their smallest pairwise cosine distance) and solves
it greedily: a token set is grown one pick at a time, each pick being the token whose
distance to its nearest already-kept token is largest. It ignores attention entirely,
so it never spends the budget on near-duplicates of a salient object.

Algorithm (distances d = 1 - cosine similarity of the projected tokens, computed in
float32):
1. First pick, the authors' seed rule: the token whose nearest *other* token is
   farthest, i.e. argmax_i min_{j != i} d(i, j) (their code takes the second-smallest
   entry of each distance column, the smallest being the token itself).
2. Repeat K - 1 times: pick argmax_j min_{s kept} d(s, j) over the tokens not yet kept.
3. Return the picks sorted, i.e. in raster order (the authors' code sorts the kept
   positions too).

How ours differs from the authors' code: it runs on the same projected tokens, but
batched (one [B, N, N] distance matrix, one vectorised step per pick; the loop over the
K picks is inherent to the greedy algorithm), and it explicitly excludes kept tokens from
later picks. The authors rely on a kept token's self-distance being 0, so on inputs
with exact duplicates (every remaining distance 0) their loop can pick a token twice and
keep fewer than K distinct tokens; ours always keeps K distinct tokens. Ties go to the
lowest position (``argmax`` returns the first maximum).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from holov_patches.methods._contract import check_pruner_inputs, gather_tokens, keep_all_tokens
from holov_patches.registry import register_pruner


def cosine_distance_matrix(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D] -> pairwise cosine distances [B, N, N] in float32 (0 = same direction)."""
    unit = F.normalize(tokens.float(), dim=-1, eps=1e-6)  # [B, N, D]
    return 1.0 - unit @ unit.transpose(1, 2)


def greedy_max_min(dist: torch.Tensor, keep: int) -> torch.Tensor:
    """Greedy max-min diversity on distances [B, N, N]: the K picks [B, K] in pick order."""
    batch, num, _ = dist.shape
    rows = torch.arange(batch, device=dist.device)
    self_mask = torch.eye(num, dtype=torch.bool, device=dist.device)
    nearest_other = dist.masked_fill(self_mask, float("inf")).amin(dim=2)  # [B, N]
    pick = nearest_other.argmax(dim=1)  # [B]: the seed rule
    picks = torch.empty(batch, keep, dtype=torch.long, device=dist.device)
    taken = torch.zeros(batch, num, dtype=torch.bool, device=dist.device)
    min_dist = torch.full((batch, num), float("inf"), device=dist.device)
    for step in range(keep):
        if step:
            pick = min_dist.masked_fill(taken, float("-inf")).argmax(dim=1)  # [B]
        picks[:, step] = pick
        taken[rows, pick] = True
        min_dist = torch.minimum(min_dist, dist[rows, pick])  # [B, N]: distance to the nearest kept token
    return picks


@register_pruner("divprune")
def prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, *, grid: Optional[Sequence[int]] = None):
    """Greedy max-min cosine diversity over the projected tokens (DivPrune, arXiv 2503.02175), raster order."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, finite_tokens=True)
    if keep >= tokens.shape[1]:
        return keep_all_tokens(tokens)
    index = greedy_max_min(cosine_distance_matrix(tokens), keep).sort(dim=1).values  # [B, K]
    return gather_tokens(tokens, index), index
