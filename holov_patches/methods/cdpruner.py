"""CDPruner as its authors run it: after the projector, conditioned on the instruction.

Paper: "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs" (Zhang et al., NeurIPS 2025, arXiv 2506.10967); code: Theia-4869/CDPruner,
``llava/model/llava_arch.py`` ``encode_images`` and
``llava/model/multimodal_encoder/clip_encoder.py`` ``forward`` / ``load_text_tower``.

The kept set is the (greedy) maximum a posteriori subset of a determinantal point process
whose kernel multiplies how similar two projected tokens are by how relevant each is to
the instruction: diverse tokens, weighted by relevance.

Inputs (stage ``projector``):
- ``tokens`` [B, N, D] the projected patches the LLM would receive;
- ``image_embeds`` [B, N, E] the selected tower layer's patches through the tower's
  ``post_layernorm`` and ``visual_projection`` (CLIP's joint space; the authors run the
  projection in float32);
- ``text_embeds`` [B, E], or [B, M, E] for M segments: the instruction's CLIP text
  embedding. The authors split a long instruction into 77-token segments, embed each
  (``CLIPTextModelWithProjection.text_embeds``) and use all M of them.

Per image, as in the authors' code:
1. Similarity ``S = u u^T`` in float32, ``u`` the tokens divided by their norm (the division
   in the tokens' dtype, then ``.float()``, as theirs).
2. Relevance: ``rel_n = mean_m( -cos(image_embeds_n, text_embeds_m) )`` (the NEGATIVE mean
   cosine), then ``rel = (rel - min + 1e-6) / (max - min)`` over the image's N patches.
   Optional (commented out in their code, off by default here too): with ``theta`` given,
   ``rel = exp(alpha * rel)`` with ``alpha = theta / (2 * (1 - theta))``.
3. Kernel ``L = diag(rel) S diag(rel)`` [N, N], float32.
4. Greedy MAP inference (Chen et al., NeurIPS 2018, "Fast greedy MAP inference for DPP"):
   ``d2 = diag(L)``; K times: ``j = argmax d2`` (first maximum on ties);
   ``e = (L[j] - sum_t c_t[j] c_t) / sqrt(d2[j])``; store ``c_i = e``; ``d2 -= e^2``;
   ``d2[j] = -inf``. Batched over B; the loop runs over the K steps only.
5. The K chosen tokens are returned in raster order.

``K >= N`` keeps all N tokens unpruned.

Deviations from the released code (none on inputs where that code gives a finite answer
for a single image):
- min/max of step 2 are taken per image (``relevance_norm="image"``). The authors take them
  over the whole batch tensor, which for their B = 1 (or the crops of one image) is the
  same; ``relevance_norm="batch"`` reproduces that;
- when every patch has the same relevance (max == min; their division gives inf/NaN) the
  relevance is taken as 1, the limit in which L is the plain similarity (the greedy choice
  does not depend on a constant relevance);
- when the best remaining ``d2[j]`` is <= 0 (every remaining token lies in the span of the
  chosen ones; their ``sqrt`` gives NaN and may pick a token twice), that step's ``e`` is
  zero, so the remaining picks go by the largest ``d2`` and stay distinct;
- an all-zero token, image embedding or text embedding (NaN in their normalisation) is
  rejected with a ``ValueError``.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

from holov_patches.methods._contract import (
    check_choice,
    check_input,
    check_pruner_inputs,
    gather_tokens,
    keep_all_tokens,
)
from holov_patches.registry import register_pruner

RELEVANCE_EPS = 1e-6  # added to the numerator of the authors' min-max normalisation
RELEVANCE_NORMS = ("image", "batch")


def _unit(name: str, value: torch.Tensor) -> torch.Tensor:
    norms = value.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(f"{name} hold an all-zero vector; CDPruner uses cosine similarity and needs them non-zero")
    return value / norms


def relevance_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor, *, theta: Optional[float] = None,
                     relevance_norm: str = "image") -> torch.Tensor:
    """image_embeds [B, N, E], text_embeds [B, M, E] -> relevance [B, N] float32 (steps 2 of the docstring)."""
    image_unit = _unit("image_embeds", image_embeds.float())
    text_unit = _unit("text_embeds", text_embeds.float())
    rel = -torch.bmm(image_unit, text_unit.transpose(1, 2)).mean(dim=2)  # [B, N]: negative mean cosine
    if relevance_norm == "image":
        low, high = rel.amin(dim=1, keepdim=True), rel.amax(dim=1, keepdim=True)  # [B, 1]
    else:
        low, high = rel.amin().expand(rel.shape[0], 1), rel.amax().expand(rel.shape[0], 1)
    span = high - low
    flat = span == 0  # constant relevance: the authors' division is 1e-6 / 0
    rel = torch.where(flat, torch.ones_like(rel), (rel - low + RELEVANCE_EPS) / torch.where(flat, 1.0, span))
    if theta is not None:
        alpha = theta / (2 * (1 - theta))
        rel = torch.exp(alpha * rel)
    return rel


def dpp_kernel(tokens: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], relevance [B, N] -> L = diag(rel) S diag(rel) [B, N, N] float32 (steps 1 and 3)."""
    unit = _unit("tokens", tokens).float()
    similarity = torch.bmm(unit, unit.transpose(1, 2))  # [B, N, N]
    return relevance[:, :, None] * similarity * relevance[:, None, :]


def greedy_dpp_map(kernel: torch.Tensor, keep: int) -> torch.Tensor:
    """kernel [B, N, N] -> [B, K] indices in pick order, by the fast greedy MAP algorithm
    of Chen et al. 2018 (step 4 of the docstring); K < N."""
    batch, num, _ = kernel.shape
    rows = torch.arange(batch, device=kernel.device)
    cis = kernel.new_zeros(batch, keep, num)  # [B, K, N] the incremental Cholesky rows
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # [B, N]
    picked = torch.empty(batch, keep, dtype=torch.long, device=kernel.device)
    for i in range(keep):
        j = di2s.argmax(dim=1)  # [B]
        picked[:, i] = j
        best = di2s[rows, j]  # [B]
        done = cis[:, :i].gather(2, j[:, None, None].expand(batch, i, 1)).squeeze(2)  # [B, i]: c_t[j]
        numer = kernel[rows, j] - torch.einsum("bt,btn->bn", done, cis[:, :i])  # [B, N]
        positive = best > 0
        eis = torch.where(positive[:, None], numer / torch.where(positive, best, 1.0).sqrt()[:, None], 0.0)
        cis[:, i] = eis
        di2s = di2s - eis.square()
        di2s[rows, j] = -float("inf")
    return picked


@register_pruner("cdpruner", stage="projector", needs=("image_embeds", "text_embeds"))
def prune(tokens: torch.Tensor, cls_attn: Optional[torch.Tensor], keep: int, *, grid: Optional[Sequence[int]] = None,
          image_embeds: torch.Tensor, text_embeds: torch.Tensor, theta: Optional[float] = None,
          relevance_norm: str = "image"):
    """Greedy MAP of an instruction-conditioned DPP over the projected tokens (CDPruner, arXiv 2506.10967)."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid, finite_tokens=True, needs_attention=False)
    batch, num, _ = tokens.shape
    check_input("image_embeds", image_embeds, (batch, num, None), tokens)
    width = image_embeds.shape[-1]
    if isinstance(text_embeds, torch.Tensor) and text_embeds.dim() == 2:
        check_input("text_embeds", text_embeds, (batch, width), tokens)
        text_embeds = text_embeds[:, None]  # one segment
    else:
        check_input("text_embeds", text_embeds, (batch, None, width), tokens)
        if text_embeds.shape[1] < 1:
            raise ValueError(f"text_embeds has shape {tuple(text_embeds.shape)}; it needs at least one segment (M >= 1)")
    if theta is not None and (not isinstance(theta, numbers.Real) or isinstance(theta, bool)
                              or not 0.0 <= float(theta) < 1.0):
        raise ValueError(f"theta={theta!r} must be None (off, the authors' default) or a number in [0, 1)")
    check_choice("relevance_norm", relevance_norm, RELEVANCE_NORMS)
    if keep >= num:
        return keep_all_tokens(tokens)
    relevance = relevance_scores(image_embeds, text_embeds, theta=None if theta is None else float(theta),
                                 relevance_norm=relevance_norm)
    picked = greedy_dpp_map(dpp_kernel(tokens, relevance), keep)
    index = picked.sort(dim=1).values  # raster order, as the authors' sort
    return gather_tokens(tokens, index), index
