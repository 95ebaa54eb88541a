"""Adapter for transformers' ``LlavaOnevisionForConditionalGeneration`` (model_type
``"llava_onevision"``, LLaVA-OneVision); the current transformers classes are hooked, no
modeling file is copied.

The layout is LLaVA-NeXT's "anyres" (see :mod:`holov_patches.adapters.hf_llava_next`): an
image is a base view (h x w patches) plus high-resolution crops stitched into one map,
unpadded to the image's aspect ratio and laid out row by row with an ``image_newline``
after every row. Two OneVision differences matter here:

- "anyres_max_N" (``vision_aspect_ratio``, "anyres_max_9" in the checkpoints): when the
  unpadded map holds more than about N base views' worth of tokens (ratio > 1.1), the model
  shrinks it AFTER the projector with a bilinear ``interpolate`` to
  (Hu // ratio, Wu // ratio). (The fixed 2x2 bilinear pooling, ``apply_pooling``, is
  applied to VIDEO frames only in transformers' OneVision; images get this interpolation.)
- a prompt with several images (``batch_num_images`` > 1 for its sample) encodes each of
  them as its base view only (h*w tokens and one trailing newline).

Signal. The SigLIP tower has no [CLS] token (and the checkpoints use
``vision_feature_select_strategy="full"``: every patch is a feature). The [CLS] attention is
replaced by the attention each patch RECEIVES in the selected layer (the layer whose output
is ``hidden_states[vision_feature_layer]``, -1 in the checkpoints): that layer's full
attention map over the view, mean over queries and heads, the rule of our Qwen adapters
(HoloV's Qwen variant, NeurIPS 2025, arXiv 2510.02912). Why not the SigLIP pooling head's
probe attention: the OneVision towers are built with ``vision_use_head=False`` (the probe
does not exist) and even where it exists it reads the post-layernorm output of the LAST
layer, not the layer the projector is fed from; the received attention is computed in the
very layer the features come from, needs no extra weights, and is what the Qwen adapters
already use for towers without [CLS]. It is recomputed from that layer's input (captured by
a temporary pre-hook on its ``self_attn``) with its own q/k projections; SDPA stays on and
queries are processed in chunks (no full map of a view is held).

Mapping through the layout: the scores of all crops are packed by the model's OWN
``pack_image_features`` (one channel, newline = -1): the same stitching, unpadding and, when
anyres_max shrinks the map, the same bilinear interpolation the features go through, so
every interpolated token's score is the same bilinear blend of its source patches' scores
as its feature is of theirs (one score per token of the packed layout). Scores are >= 0,
so the -1 sentinel marks the newlines exactly.

Budget: ``PruningConfig.split_budget([n_base, n_hires])``, the one common rule (K of the
image's n_base + n_hires tokens, from ``keep`` or ``ratio`` of the total, split in
proportion to the parts' sizes by largest remainder; newlines not counted). A base-only
image is one part. Newlines: as the LLaVA-NeXT adapter (faithful mode drops them; improved
mode keeps a row's newline when the row keeps a token, and the base-only trailing newline).
Positions: 1-D RoPE (Qwen2 language model), as the LLaVA-NeXT adapter: 'original' gives
every kept vector the ORIGINAL position of its packed slot, 'compact' renumbers the pruned
sequence (``PruningConfig.position_ids``, resolved by the base class).

Videos (``pixel_values_videos``) are passed through unpruned (encoded by the model's own
``get_video_features``). Not supported (refused with a ValueError): strategy "default"
(it would drop a SigLIP patch, not a [CLS] token) and a list of feature layers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from holov_patches.adapters.base import PrunedImage, captured_argument
from holov_patches.adapters.hf_llava import clip_layers, patch_grid, resolve_feature_settings, selected_layer
from holov_patches.adapters.hf_llava_next import HFLlavaNextAdapter
from holov_patches.adapters.qwen2_5_vl import attention_received

_NEWLINE = -1.0  # sentinel score of an image_newline in the packed score map (real scores are >= 0)


def received_attention(attn: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """attn: a SigLIP/CLIP-style attention module (q_proj, k_proj, num_heads, head_dim, scale);
    hidden [V, T, C] its (normed) input. Returns [V, T] float32: per token, the softmax
    attention it receives inside its own view, mean over the T queries and the heads."""
    views, seq, _ = hidden.shape
    query = attn.q_proj(hidden).reshape(views * seq, attn.num_heads, attn.head_dim)  # [V*T, H, hd]
    key = attn.k_proj(hidden).reshape(views * seq, attn.num_heads, attn.head_dim)
    return attention_received(query, key, attn.scale, [seq] * views).view(views, seq)


class LlavaOnevisionAdapter(HFLlavaNextAdapter):
    """Prunes each anyres image's base view and its (possibly interpolated) high-res map separately."""

    family = "llava_onevision"
    image_inputs = ("pixel_values", "image_sizes", "batch_num_images")

    def check_model(self, model: nn.Module) -> None:
        base = getattr(model, "model", None)
        if base is None or not hasattr(base, "get_image_features") or not hasattr(base, "vision_tower") \
                or not hasattr(base, "pack_image_features") or not hasattr(base, "image_newline"):
            raise ValueError(f"{type(model).__name__} has no .model.get_image_features/.vision_tower/"
                             ".pack_image_features/.image_newline: not a transformers LLaVA-OneVision model")
        clip_layers(base.vision_tower)  # SigLIP: encoder.layers[i].self_attn.q_proj/k_proj

    # -- the signal ----------------------------------------------------------
    def feature_settings(self, arguments: Dict[str, Any]) -> Tuple[Any, str]:
        return resolve_feature_settings(self.model.config, arguments, "full",
                                        "the SigLIP tower has no [CLS] token; 'default' would drop a patch")

    def signal_module(self, arguments: Dict[str, Any]) -> nn.Module:
        layers = clip_layers(self.base.vision_tower)
        layer, _ = self.feature_settings(arguments)
        return layers[selected_layer(layer, len(layers))].self_attn

    def cls_attention(self, arguments: Dict[str, Any], seen: Dict[str, Any]) -> torch.Tensor:
        """[views, N] float32: the attention each patch receives in the selected layer (the [CLS] stand-in)."""
        hidden = captured_argument(seen, "hidden_states", 0, "the selected SigLIP layer's self_attn")  # [views, N, C]
        with torch.no_grad():
            return received_attention(self.signal_module(arguments), hidden)

    # -- layout --------------------------------------------------------------
    def crops_per_image(self, arguments: Dict[str, Any]) -> List[int]:
        """Views per image, as ``LlavaOnevisionModel.get_image_features`` counts them."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        image_sizes = arguments["image_sizes"]
        batch_num_images = arguments.get("batch_num_images")
        if batch_num_images is None:
            need_patching = [True] * len(image_sizes)
        else:
            need_patching = [int(n) == 1 for n in batch_num_images for _ in range(int(n))]
        return [image_size_to_num_patches(image_size=size, grid_pinpoints=self.model.config.image_grid_pinpoints,
                                          patch_size=self.model.config.vision_config.image_size) if patch else 1
                for size, patch in zip(image_sizes, need_patching)]

    def aspect_ratio(self, arguments: Dict[str, Any]) -> str:
        ratio = arguments.get("vision_aspect_ratio")
        return self.model.config.vision_aspect_ratio if ratio is None else ratio

    def prune_encoded(self, arguments: Dict[str, Any], outputs, seen: Dict[str, Any]) -> List[PrunedImage]:
        scores = self.cls_attention(arguments, seen)  # [all views, hw]
        packed = list(outputs.pooler_output)  # per image [run_len, D], newline vectors included
        patches = scores.shape[1]
        side = patch_grid(self.model.config.vision_config, patches)
        crops = self.crops_per_image(arguments)
        if sum(crops) != scores.shape[0]:
            raise ValueError(f"the vision tower saw {scores.shape[0]} views, image_sizes imply {sum(crops)}")
        maps = [s.reshape(c, patches, 1) for s, c in zip(scores.split(crops), crops)]  # [views, hw, 1] per image
        newline = torch.tensor([_NEWLINE], dtype=scores.dtype, device=scores.device)
        packed_scores, _ = self.base.pack_image_features(maps, arguments["image_sizes"], image_newline=newline,
                                                         vision_aspect_ratio=self.aspect_ratio(arguments))
        results = []
        for feats, packed_score in zip(packed, packed_scores):
            packed_score = packed_score.squeeze(-1)  # [run_len] score per packed token, -1 at newlines
            is_newline = packed_score == _NEWLINE
            # the LLaVA-NeXT pruning with "source" = the token's own packed offset, signal = the packed scores
            layout = torch.where(is_newline, torch.full_like(packed_score, -1.0),
                                 torch.arange(packed_score.numel(), dtype=packed_score.dtype, device=packed_score.device))
            results.append(self.prune_one(feats, layout, packed_score.clamp(min=0), patches, side))
        return results

    # -- forward plumbing ----------------------------------------------------
    def encode_images(self, arguments: Dict[str, Any]):
        """``LlavaOnevisionModel.forward``'s own call on pixel_values (it passes no vision_aspect_ratio)."""
        return self.base.get_image_features(
            arguments["pixel_values"], arguments.get("image_sizes"),
            vision_feature_layer=arguments.get("vision_feature_layer"),
            vision_feature_select_strategy=arguments.get("vision_feature_select_strategy"),
            batch_num_images=arguments.get("batch_num_images"), return_dict=True)

    def _prefill(self, original, arguments: Dict[str, Any], encoded: Dict[str, Any]):
        """Images arrive pre-encoded (``mm_encoder_outputs``); the unpatched forward refuses
        ``pixel_values_videos`` next to them, so videos are encoded here with the model's own
        call (what its forward does) and passed through unpruned."""
        videos = arguments.get("pixel_values_videos")
        if videos is not None and encoded.get("video") is None:
            encoded = {**encoded, "video": self.base.get_video_features(
                videos, vision_feature_layer=arguments.get("vision_feature_layer"),
                vision_feature_select_strategy=arguments.get("vision_feature_select_strategy"), return_dict=True)}
            arguments = {**arguments, "pixel_values_videos": None, "mm_encoder_outputs": encoded}
        return super()._prefill(original, arguments, encoded)
