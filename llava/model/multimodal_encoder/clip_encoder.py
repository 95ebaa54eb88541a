"""The CLIP vision tower, loaded from ``mm_vision_tower`` (a hub id or a local path).

Besides the selected layer's patch features it returns the [CLS] -> patch attention of
that layer, averaged over heads, computed from the layer's input with its own q/k
projections, so SDPA stays on for the whole tower. Layers after the selected one are
not run.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from holov_patches.clip_cls_attention import run_clip_vision


def image_processor_class():
    """transformers' default CLIP processor needs torchvision; without it (our CPU set-up:
    PyPI's torchvision does not work beside the CPU torch) the PIL one gives the same
    336x336 tensors, and picking it directly avoids a fallback warning on every load."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


class CLIPVisionTower(nn.Module):
    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature={self.select_feature!r} is not one of ('patch', 'cls_patch')")
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            return
        self.image_processor = image_processor_class().from_pretrained(self.vision_tower_name)
        self.vision_tower = CLIPVisionModel.from_pretrained(self.vision_tower_name, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def _features(self, pixel_values: torch.Tensor, with_cls_attn: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        hidden, cls_attn = run_clip_vision(self.vision_tower, pixel_values.to(device=self.device, dtype=self.dtype),
                                           self.select_layer, with_cls_attn=with_cls_attn)
        features = hidden[:, 1:] if self.select_feature == "patch" else hidden
        return features, cls_attn

    @torch.no_grad()
    def forward(self, images: Union[torch.Tensor, List[torch.Tensor]], with_cls_attn: bool = False):
        """images [B, 3, S, S] (or a list of [3, S, S]) -> features [B, N, C] in the
        images' dtype; with ``with_cls_attn`` also the [CLS] attention [B, N] (float32)."""
        if isinstance(images, list):
            images = torch.stack(images, dim=0)
        features, cls_attn = self._features(images, with_cls_attn)
        features = features.to(images.dtype)
        return (features, cls_attn) if with_cls_attn else features

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self):
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2
