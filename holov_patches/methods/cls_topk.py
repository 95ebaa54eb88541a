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
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from holov_patches.methods._contract import check_pruner_inputs, gather_tokens, keep_all_tokens, topk_raster
from holov_patches.registry import register_pruner


@register_pruner("cls_topk")
def prune(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, *, grid: Optional[Sequence[int]] = None):
    """Top-K visual tokens by [CLS] attention (FasterVLM, arXiv 2412.01818), kept in raster order."""
    keep = check_pruner_inputs(tokens, cls_attn, keep, grid)
    if keep >= tokens.shape[1]:
        return keep_all_tokens(tokens)
    index = topk_raster(cls_attn, keep).to(tokens.device)  # [B, K]
    return gather_tokens(tokens, index), index

