"""Keep the K visual tokens that are most different from each other (greedy max-min
diversity).

Paper: "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models"
(Alvar et al., CVPR 2025, arXiv 2503.02175). It casts pruning as the Max-Min Diversity
Problem (choose K tokens maximising their smallest pairwise cosine distance) and solves
it greedily: a token set is grown one pick at a time, each pick being the token whose
distance to its nearest already-kept token is largest. It ignores attention entirely,
so it never spends the budget on near-duplicates of a salient object.

Algorithm, as the authors' LLaVA code (``DivPrune`` and ``pairwise_cosine_similarity`` in
``LLaVA/llava/model/llava_arch.py`` of github.com/vbdi/divprune), on the projected tokens:
1. Distances d = 1 - u u^T with u = x / ||x||: the norm, the division, one 2-D matmul per
   image and the ``1 -`` all in the tokens' dtype (float16 under LLaVA's loader), as they run.
2. First pick, the authors' seed rule: for each token j the second-smallest entry of its
   distance column (the smallest is normally its own distance, about 0), and the token where
   that is largest (first one on ties).
3. Repeat K - 1 times: pick argmax_j min_{s kept} d(s, j) (the kept tokens' rows, their
   minimum per column j).
4. Return the picks sorted, i.e. in raster order (the authors' code sorts the kept
   positions too).

Option ``dtype`` (``options={"dtype": ...}``): "model" (default) computes the distances in the
tokens' dtype, as the authors ran; "float32" casts the tokens to float32 first (more exact;
in half precision the two keep different sets on many images, since greedy picks turn on
small differences). The greedy steps only compare and take minima of the distances, so they
are exact in either dtype.

How ours differs from the authors' code: batched (one [B, N, N] distance tensor, one
vectorised step per pick; the loop over the K picks is inherent to the greedy algorithm),
a zero token's norm is clamped to 1e-6 (the authors' code would give NaN distances), and it
explicitly excludes kept tokens from later picks. The authors rely on a kept token's
self-distance being 0, so on inputs with exact duplicates (every remaining distance 0)
their loop can pick a token twice and keep fewer than K distinct tokens; ours always keeps
K distinct tokens. Ties go to the lowest position (``argmax`` returns the first maximum).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from holov_patches.methods._contract import check_choice, check_pruner_inputs, gather_tokens, keep_all_tokens
from holov_patches.registry import register_pruner


DTYPES = ("model", "float32")


def cosine_distance_matrix(tokens: torch.Tensor, dtype: str = "model") -> torch.Tensor:
    """tokens [B, N, D] -> pairwise cosine distances [B, N, N] (0 = same direction), in the
    tokens' dtype ("model", as the authors) or in float32."""
    check_choice("dtype", dtype, DTYPES)
    unit = F.normalize(tokens if dtype == "model" else tokens.float(), dim=-1, eps=1e-6)  # [B, N, D]
    return 1.0 - torch.stack([u @ u.T for u in unit])  # one 2-D matmul per image, as the authors' torch.mm


def greedy_max_min(dist: torch.Tensor, keep: int) -> torch.Tensor:
    """Greedy max-min diversity on distances [B, N, N]: the K picks [B, K] in pick order."""
    batch, num, _ = dist.shape
    rows = torch.arange(batch, device=dist.device)
    pick = dist.topk(min(2, num), dim=1, largest=False).values[:, -1].argmax(dim=1)  # [B]: the seed rule, per column
    picks = torch.empty(batch, keep, dtype=torch.long, device=dist.device)
    taken = torch.zeros(batch, num, dtype=torch.bool, device=dist.device)
    min_dist = torch.full((batch, num), float("inf"), dtype=dist.dtype, device=dist.device)
    for step in range(keep):
        if step:
            pick = min_dist.masked_fill(taken, float("-inf")).argmax(dim=1)  # [B]
        picks[:, step] = pick
        taken[rows, pick] = True
        min_dist = torch.minimum(min_dist, dist[rows, pick])  # [B, N]: distance to the nearest kept token
    return picks


@register_pruner("divprune", needs=())
def prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, *, grid: Optional[Sequence[int]] = None,
          dtype: str = "model"):
    """Greedy max-min cosine diversity over the projected tokens (DivPrune, arXiv 2503.02175), raster order."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, finite_tokens=True, needs_attention=False)
    check_choice("dtype", dtype, DTYPES)
    if keep >= tokens.shape[1]:
        return keep_all_tokens(tokens)
    index = greedy_max_min(cosine_distance_matrix(tokens, dtype), keep).sort(dim=1).values  # [B, K]
    return gather_tokens(tokens, index), index
