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

from holov_patches.signals import cls_attention_from_hidden


def _layer_indices(select_layer: int, num_layers: int) -> Tuple[int, int]:
    """(layers to run, index of the layer whose attention is read).

    hidden_states has num_layers + 1 entries (embeddings first); attentions has num_layers.
    The authors read hidden_states[select_layer] and attentions[select_layer]; for the
    usual negative select_layer (-2 in LLaVA-1.5) both name the same layer."""
    if not -num_layers - 1 <= select_layer <= num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} is outside [-{num_layers + 1}, {num_layers}] for a {num_layers}-layer tower")
    hidden_index = select_layer % (num_layers + 1)
    if not -num_layers <= select_layer < num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} has no attention map: accepted [-{num_layers}, {num_layers - 1}]")
    attn_index = select_layer % num_layers
    return max(hidden_index, attn_index + 1), attn_index


def run_clip_vision(vision_model: nn.Module, pixel_values: torch.Tensor, select_layer: int,
                    with_cls_attn: bool = True, attention_dtype: str = "model") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run a transformers ``CLIPVisionModel`` only as deep as LLaVA needs.

    Returns (hidden_states[select_layer] [B, T, C], cls_attn [B, T-1] or None); the row is
    computed as ``holov_patches.signals.cls_attention_from_hidden`` does for ``attention_dtype``
    (``model``: in the tower's dtype, as the authors' eager path; ``float32``).
    Equal to the full model's ``output_hidden_states`` entry: the same modules run in the
    same order; the layers after the selected one are skipped."""
    core = getattr(vision_model, "vision_model", vision_model)  # 4.x nests it, 5.x does not
    layers = core.encoder.layers
    run_layers, attn_index = _layer_indices(select_layer, len(layers))
    hidden = core.pre_layrnorm(core.embeddings(pixel_values))
    hidden_index = select_layer % (len(layers) + 1)
    selected = hidden if hidden_index == 0 else None
    cls_attn = None
    for i, layer in enumerate(layers[:run_layers]):
        if with_cls_attn and i == attn_index:
            cls_attn = cls_attention_from_hidden(layer.self_attn, layer.layer_norm1(hidden), attention_dtype)
        hidden = layer(hidden, None)
        if i + 1 == hidden_index:
            selected = hidden
    return selected, cls_attn


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

    def _features(self, pixel_values: torch.Tensor, with_cls_attn: bool,
                  attention_dtype: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        hidden, cls_attn = run_clip_vision(self.vision_tower, pixel_values.to(device=self.device, dtype=self.dtype),
                                           self.select_layer, with_cls_attn=with_cls_attn, attention_dtype=attention_dtype)
        features = hidden[:, 1:] if self.select_feature == "patch" else hidden
        return features, cls_attn

    @torch.no_grad()
    def forward(self, images: Union[torch.Tensor, List[torch.Tensor]], with_cls_attn: bool = False,
                attention_dtype: str = "model"):
        """images [B, 3, S, S] (or a list of [3, S, S]) -> features [B, N, C] in the
        images' dtype; with ``with_cls_attn`` also the [CLS] attention [B, N] (in the tower's
        dtype for ``attention_dtype="model"``, float32 for ``"float32"``)."""
        if isinstance(images, list):
            images = torch.stack(images, dim=0)
        features, cls_attn = self._features(images, with_cls_attn, attention_dtype)
        features = features.to(images.dtype)
        return (features, cls_attn) if with_cls_attn else features

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
