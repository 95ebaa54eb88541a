"""PLACEHOLDER: the HoloV pruner is being written (issue 3). Registers a stub that raises."""
import torch
from holov_patches.registry import register_pruner


@register_pruner("holov")
def prune(tokens, cls_attn, keep, num_crops=None, mode="faithful", grid=None, alpha=0.09):
    """HoloV (placeholder until the real implementation lands)."""
    raise NotImplementedError("holov placeholder")
