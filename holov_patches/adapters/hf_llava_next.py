"""Adapter for transformers' ``LlavaNextForConditionalGeneration`` (model_type
``"llava_next"``, LLaVA-NeXT / LLaVA-1.6 "anyres").

An image is a low-resolution base view (h x w patches) plus a grid of high-resolution
crops, stitched into one feature map, unpadded to the image's aspect ratio (Hu x Wu) and
laid out row by row with an ``image_newline`` token after every row. Each image is pruned
in two parts with the one registry call (HoloV, NeurIPS 2025, arXiv 2510.02912):

- base: [h*w] tokens, [CLS] attention of the base view, grid (h, w);
- high-res: [Hu*Wu] tokens, each with the [CLS] attention of the crop and patch it came
  from, grid (Hu, Wu) (crops follow the stitched 2-D layout, not the per-crop order).

Budget: ``PruningConfig.split_budget([n_base, n_hires])``, the rule our own LLaVA-NeXT path
uses too: K of the image's n_base + n_hires tokens (from ``keep`` or ``ratio`` of the
total), split in proportion to the parts' sizes by largest remainder. Newline tokens are
not counted.

``image_newline``: dropped in faithful mode, as the authors' anyres path does (only kept
tokens reach the LLM, in the pruner's order); in improved mode the kept tokens of each
part are put back in raster order and a row's newline is kept when the row keeps at least
one token (the base-only layout's single trailing newline is always kept).

Layout: instead of re-deriving the model's stitching, the adapter runs the model's own
``pack_image_features`` on a map of patch indices (one channel, newline = -1), which tells
for every packed token which crop patch it came from and where the newlines sit.
Positions: as the ``llava`` adapter (``position_ids``): 'original' gives every kept vector
(and kept newline) the ORIGINAL position id of its packed slot; 'compact' renumbers the
pruned sequence 0..T'-1.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from holov_patches.adapters.base import PrunedImage, prune_part
from holov_patches.adapters.hf_llava import HFLlavaAdapter, patch_grid


def packed_layout(base_model: nn.Module, crops_per_image: Sequence[int], patches_per_crop: int,
                  image_sizes, strategy: str) -> List[torch.Tensor]:
    """Per image [run_len] float64: for every token of the model's own packed layout, the
    index of its source patch in that image's crops (crop c, patch p -> c * patches + p),
    or -1 for an image_newline. Computed by the model's ``pack_image_features`` itself."""
    index_maps = [torch.arange(c * patches_per_crop, dtype=torch.float64).view(c, patches_per_crop, 1)  # [crops, hw, 1]
                  for c in crops_per_image]
    layout, _ = base_model.pack_image_features(index_maps, image_sizes, vision_feature_select_strategy=strategy,
                                               image_newline=torch.tensor([-1.0], dtype=torch.float64))
    return [part.squeeze(-1) for part in layout]


class HFLlavaNextAdapter(HFLlavaAdapter):
    """Prunes each anyres image's base view and its unpadded high-res map separately."""

    family = "llava_next"

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        if not hasattr(model.model, "pack_image_features"):
            raise ValueError(f"{type(model).__name__} has no .model.pack_image_features: not a transformers LLaVA-NeXT model")

    def crops_per_image(self, image_sizes) -> List[int]:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        return [image_size_to_num_patches(image_size=size, grid_pinpoints=self.model.config.image_grid_pinpoints,
                                          patch_size=self.model.config.vision_config.image_size) for size in image_sizes]

    def prune_encoded(self, arguments: Dict[str, Any], outputs, seen: Dict[str, Any]) -> List[PrunedImage]:
        image_sizes = arguments["image_sizes"]
        _, strategy = self.feature_settings(arguments)
        cls_attn = self.cls_attention(arguments, seen)  # [all crops, hw]
        packed = list(outputs.pooler_output)  # per image [run_len, D], newline vectors included
        patches = cls_attn.shape[1]
        side = patch_grid(self.model.config.vision_config, patches)
        crops = self.crops_per_image(image_sizes)
        if sum(crops) != cls_attn.shape[0]:
            raise ValueError(f"the vision tower saw {cls_attn.shape[0]} crops, image_sizes imply {sum(crops)}")
        layouts = packed_layout(self.base, crops, patches, image_sizes, strategy)
        return [self.prune_one(feats, layout, signal.reshape(-1), patches, side)
                for feats, layout, signal in zip(packed, layouts, cls_attn.split(crops))]

    def encode_images(self, arguments: Dict[str, Any]):
        """``LlavaNextModel.forward``'s own call on pixel_values."""
        return self.base.get_image_features(
            arguments["pixel_values"], arguments.get("image_sizes"),
            vision_feature_layer=arguments.get("vision_feature_layer"),
            vision_feature_select_strategy=arguments.get("vision_feature_select_strategy"), return_dict=True)

    def prune_one(self, feats: torch.Tensor, layout: torch.Tensor, signal: torch.Tensor, patches: int,
                  side: Tuple[int, int]) -> PrunedImage:
        """One image: feats [run_len, D] (the model's packing), layout [run_len] (source
        patch or -1), signal [crops * hw] (crop-major [CLS] attention)."""
        if layout.shape[0] != feats.shape[0]:
            raise ValueError(f"packed layout has {layout.shape[0]} tokens, the features {feats.shape[0]}")
        layout = layout.to(feats.device)
        hires = layout[patches:]  # [run_len - hw] high-res patch indices, -1 at newlines
        is_newline = hires < 0
        hires_offsets = patches + (~is_newline).nonzero().squeeze(1)  # [n_hires] run offsets, raster order
        newline_offsets = patches + is_newline.nonzero().squeeze(1)  # [rows]
        n_hires, rows = int(hires_offsets.numel()), int(newline_offsets.numel())
        k_base, k_hires = self.config.split_budget([patches, n_hires])

        base_kept, base_index = prune_part(feats[None, :patches], signal[None, :patches], self.config, keep=k_base, grid=side)
        vectors, offsets = [base_kept[0]], [base_index[0]]  # base offsets are its patch indices (-1 = zero pad)
        indices = [base_index[0]]
        if n_hires:
            if n_hires % rows:
                raise ValueError(f"{n_hires} high-res tokens do not fill {rows} rows")
            source = hires[~is_newline].long()  # [n_hires] index into this image's crops x patches
            kept, index = prune_part(feats[hires_offsets][None], signal[source][None], self.config, keep=k_hires,
                                     grid=(rows, n_hires // rows))
            vectors.append(kept[0])
            offsets.append(torch.where(index[0] >= 0, hires_offsets[index[0].clamp(min=0)], index[0]))
            indices.append(torch.where(index[0] >= 0, patches + index[0], index[0]))
        vectors, offsets, kept_index = torch.cat(vectors), torch.cat(offsets), torch.cat(indices)  # [K', D], [K'], [K']
        parts = [side] + ([(rows, n_hires // rows)] if n_hires else [])
        if self.config.mode != "faithful":
            vectors, offsets = self.with_newlines(feats, vectors, offsets, newline_offsets, n_hires, patches)
        return PrunedImage(vectors=vectors, offsets=offsets, index=kept_index, num_tokens=patches + n_hires, parts=parts)

    @staticmethod
    def with_newlines(feats, vectors, offsets, newline_offsets, n_hires: int, patches: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Improved mode: raster order, plus the newline of every row that keeps a token."""
        real = offsets >= 0
        if n_hires:
            row_width = (int(feats.shape[0]) - patches) // int(newline_offsets.numel())  # Wu + 1
            kept_hires = offsets[real & (offsets >= patches)]
            lines = newline_offsets[torch.unique((kept_hires - patches) // row_width)]  # rows keeping >= 1 token
        else:
            lines = newline_offsets  # base-only layout: its single trailing newline
        all_offsets = torch.cat([offsets[real], lines])
        all_vectors = torch.cat([vectors[real], feats[lines]])
        order = torch.argsort(all_offsets, stable=True)  # packed layout: row-major, newline at each row's end
        pads = ~real  # zero pads (none from improved HoloV) go last
        return (torch.cat([all_vectors[order], vectors[pads]]),  # vectors, offsets
                torch.cat([all_offsets[order], offsets[pads]]))
