"""Adapter for transformers' ``Qwen3VLForConditionalGeneration`` (model_type ``"qwen3_vl"``);
the current transformers classes are hooked, no modeling file is copied.

Qwen3-VL is the Qwen2-VL family (full-attention vision tower, no window permutation, one
full-attention segment per frame, 2x2 spatial merger, 3-D M-RoPE) plus DeepStack: the vision
tower also returns ``deepstack_features``, one merged feature map per level of
``vision_config.deepstack_visual_indexes`` (intermediate vision blocks, each through its own
merger), which ``get_image_features`` splits per image exactly like ``pooler_output``
(``deepstack_features[level][image]`` is ``[n_image, D]``, the same rows as the image's
merged tokens). The language model adds level ``l`` to the hidden states after decoder
layer ``l`` at the visual positions (``hidden[visual_pos_masks] += deepstack[l]``, the mask
being the image (and video) placeholders of ``input_ids``). This class extends
:class:`~holov_patches.adapters.qwen2_vl.Qwen2VLAdapter`; only the differences are here.

Where: after the vision merger, per image, on that image's own merged tokens (each image of
a prompt or a batch gets its own budget: ``ratio`` of its own token count, or ``keep`` = K).

Signal (the rule of the Qwen2-VL / Qwen2.5-VL adapters: HoloV's Qwen variant, NeurIPS 2025,
arXiv 2510.02912): the attention each patch RECEIVES in the LAST vision block (the block
whose output feeds the main merger, i.e. ``pooler_output``, the tokens that are pruned; the
DeepStack levels are earlier blocks and are not scored): the block's full per-image
attention map, mean over queries and heads, recomputed from the block input captured by a
temporary pre-hook on ``blocks[-1].attn`` with the block's own ``qkv`` and rotary embedding
(SDPA stays on), then averaged over each 2x2 merge group (the tower runs in the merger's
order, so no un-permutation). The pruner gets the merged grid (h/2, w/2).

DeepStack: the pruner runs ONCE per image (on the main merged tokens); the SAME kept offsets
select the rows of every DeepStack level, so the pruned prefill's ``visual_pos_masks`` (the
kept placeholders) and every level's rows stay aligned token for token: level ``l`` of a kept
vector whose offset is ``o`` is ``deepstack_features[l][image][o]``. A faithful-HoloV zero pad
(offset -1) gets zero DeepStack rows (adding zero: nothing is injected there). A merged row
(``visionzip_projected``'s contextual tokens, which carry their target's index) gets the
DeepStack rows of that target: the pruner returns no group membership, so the DeepStack
levels are not merged the way the main tokens are.

Positions: as Qwen2-VL (original 3-D M-RoPE positions of the unpruned sequence, computed once;
``generate``'s 4-row ``[text; t; h; w]`` ids are gathered the same way); ``position_ids=
'compact'`` is refused. Videos: ``Qwen3VLModel.get_video_features`` calls the instance's
``get_image_features``, so it is wrapped too, and while it runs the image seam passes
straight through (videos are never pruned, their DeepStack features are untouched); images
with t > 1 raise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from holov_patches.adapters.base import PrunedImage, _InstancePatch
from holov_patches.adapters.qwen2_vl import Qwen2VLAdapter


@dataclass
class PrunedDeepstackImage(PrunedImage):
    """A :class:`PrunedImage` plus, per DeepStack level, the rows [n, D] of its kept vectors."""

    deepstack: Tuple[torch.Tensor, ...] = ()


def kept_deepstack_rows(levels, offsets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """levels: one [N, D] map per DeepStack level of one image; offsets [n] (-1: zero pad) ->
    per level the [n, D] rows at those offsets (zeros for a pad)."""
    rows = []
    for level in levels:
        index = offsets.to(level.device)
        picked = level.index_select(0, index.clamp(min=0))
        rows.append(torch.where((index >= 0)[:, None], picked, torch.zeros_like(picked)))
    return tuple(rows)


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Prunes each image's merged tokens by the attention they receive in the last vision
    block, and the same rows of every DeepStack level."""

    family = "qwen3_vl"
    family_name = "Qwen3-VL"
    modeling_module = "transformers.models.qwen3_vl.modeling_qwen3_vl"

    def __init__(self, model: nn.Module, config):
        super().__init__(model, config)
        self._encoding_video = 0  # > 0 while the base model's get_video_features runs

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        if not hasattr(model.model.visual, "deepstack_visual_indexes"):
            raise ValueError(f"{type(model).__name__}.model.visual has no deepstack_visual_indexes: not a transformers "
                             f"{self.family_name} model")

    # -- install: the video seam as well ---------------------------------------
    def install(self) -> None:
        super().install()
        try:
            self._patches.append(_InstancePatch(self.base, "get_video_features", self._get_video_features))
        except Exception:
            self.remove()
            raise

    def _get_video_features(self, original, signature, args, kwargs):
        """Runs unchanged; it calls the (patched) get_image_features, which passes through meanwhile."""
        self._encoding_video += 1
        try:
            return original(*args, **kwargs)
        finally:
            self._encoding_video -= 1

    def _get_image_features(self, original, signature, args, kwargs):
        if self._encoding_video:
            return original(*args, **kwargs)  # a video: not pruned, nothing remembered or forgotten
        return super()._get_image_features(original, signature, args, kwargs)

    # -- signal and pruning ----------------------------------------------------
    def prune_encoded(self, arguments: Dict[str, Any], outputs, seen: Dict[str, Any]) -> List[PrunedImage]:
        results = super().prune_encoded(arguments, outputs, seen)
        levels = list(getattr(outputs, "deepstack_features", None) or [])  # [level][image] -> [n_image, D]
        for level in levels:
            if len(level) != len(results) or any(int(f.shape[0]) != r.num_tokens for f, r in zip(level, results)):
                raise RuntimeError(f"DeepStack features of shapes {[tuple(f.shape) for f in level]} do not match the "
                                   f"images' merged tokens {[r.num_tokens for r in results]}")
        return [PrunedDeepstackImage(vectors=r.vectors, offsets=r.offsets, index=r.index, num_tokens=r.num_tokens,
                                     grid=r.grid, parts=r.parts,
                                     deepstack=kept_deepstack_rows([level[i] for level in levels], r.offsets))
                for i, r in enumerate(results)]

    def _prefill(self, original, arguments: Dict[str, Any], encoded: Dict[str, Any]):
        """The shared prefill passes only the kept vectors (``pooler_output``); the kept rows of
        every DeepStack level go with them, image by image in the same order."""
        results = [self._lookup(features) for features in encoded["image"].pooler_output]

        def with_deepstack(**new):
            image = new["mm_encoder_outputs"]["image"]
            count = len(results[0].deepstack) if results else 0
            deepstack = [tuple(result.deepstack[level] for result in results) for level in range(count)]
            new["mm_encoder_outputs"] = {**new["mm_encoder_outputs"],
                                         "image": type(image)(pooler_output=image.pooler_output,
                                                              deepstack_features=deepstack)}
            return original(**new)

        return super()._prefill(with_deepstack, arguments, encoded)
