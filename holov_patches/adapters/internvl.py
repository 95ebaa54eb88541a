"""Adapter for transformers' ``InternVLForConditionalGeneration`` (model_type ``"internvl"``,
InternVL 2.5 / 3 in the transformers format); the current transformers classes are hooked,
no modeling file is copied.

An image is several 448 px tiles (dynamic tiling) plus, when there is more than one tile,
a thumbnail of the whole image, which the processor puts last. Every tile goes through
InternViT on its own ([CLS] + s x s patches); the model drops [CLS] (strategy "default"),
pixel-shuffles each 2 x 2 block of patches into one token (``downsample_ratio`` 0.5) and
projects: (s/2)^2 tokens per tile (256 for 448 px), in raster order of the merged grid. The
prompt holds one run of ``tiles x (s/2)^2`` image tokens per image (between ``<img>`` and
``</img>``); ``get_image_features`` returns one [tiles, (s/2)^2, D] tensor for all tiles of
all images, so which tiles form an image is read from the runs of image tokens in
``input_ids`` (run length / tokens per tile), at the prefill.

Signal: the [CLS] -> patch attention of the layer whose output the model feeds the
projector (``vision_feature_layer``, -1 = the last layer), heads averaged, recomputed from
that layer's captured attention input with the layer's own q/k projections and its q/k
norms (SDPA stays on). Through the pixel shuffle: the [s, s] score map of each tile is put
through the model's OWN ``pixel_shuffle`` (one channel in, 4 out: the 4 patches that form
each merged token, in the shuffle's order) and the 4 values are averaged, so each merged
token gets the mean [CLS] attention of exactly the 2 x 2 patches whose features it holds.

Budget: K per image (``keep``, or ``ratio`` of the image's tiles x (s/2)^2 tokens), split
over its tiles (thumbnail included, one part like any tile) with the one common rule,
``PruningConfig.split_budget([n_tile] * tiles)``; each tile is pruned on its merged grid
(s/2, s/2). No newline tokens in this family. Positions: 1-D RoPE language model, as the
``llava`` adapter: 'compact' renumbers the pruned sequence 0..T'-1, 'original' keeps each
kept token's original position (``PruningConfig.position_ids``, resolved by the base class).

Not supported (ValueError): strategy "full" (the [CLS] token would be a feature and the
features form no square grid), a list of ``vision_feature_layer``s, image runs that are not
a whole number of tiles. Videos: the InternVL processor turns every video frame into a
one-tile image (same image token, frames merged into ``pixel_values``), so the model
receives no marker that tells a frame from an image: frames are pruned like one-tile images
(there is nothing to refuse or pass through at this level).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from holov_patches.adapters.base import (PrunedImage, SequencePruningAdapter, bind_arguments, capture_input,
                                         captured_argument, prune_part)
from holov_patches.adapters.hf_llava import resolve_feature_settings, selected_layer


def internvit_layers(vision_tower: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(vision_tower, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(getattr(layer, "attention", None), "q_proj") for layer in layers):
        raise ValueError(f"the vision tower {type(vision_tower).__name__} is not an InternViT encoder "
                         "(encoder.layer[i].attention.q_proj/k_proj)")
    return layers


def internvit_cls_attention(attn: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """attn: an InternViT attention module; hidden [T, 1+N, C] its (normed) input.
    Returns [T, N] float32: the [CLS] query's softmax attention over the patches, heads averaged."""
    tiles, seq, _ = hidden.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_norm(attn.q_proj(hidden[:, :1])).reshape(tiles, 1, heads, head_dim).transpose(1, 2)  # [T, H, 1, hd]
    k = attn.k_norm(attn.k_proj(hidden)).reshape(tiles, seq, heads, head_dim).transpose(1, 2)  # [T, H, 1+N, hd]
    probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)).float() * attn.scale, dim=-1)  # [T, H, 1, 1+N]
    return probs[:, :, 0, 1:].mean(dim=1)


def image_token_runs(image_mask: torch.Tensor) -> List[int]:
    """image_mask [B, L] -> lengths of the maximal runs of image tokens, row-major (a run never spans rows)."""
    runs: List[int] = []
    for row in image_mask.tolist():
        length = 0
        for flag in row + [False]:
            if flag:
                length += 1
            elif length:
                runs.append(length)
                length = 0
    return runs


class InternVLAdapter(SequencePruningAdapter):
    """Prunes each image's pixel-shuffled tile tokens, the image's K split over its tiles."""

    family = "internvl"
    image_inputs = ("pixel_values",)

    def __init__(self, model: nn.Module, config):
        super().__init__(model, config)
        self._scores: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (latest pooled tensor, its [tiles, n] scores)

    def check_model(self, model: nn.Module) -> None:
        base = getattr(model, "model", None)
        if base is None or not hasattr(base, "get_image_features") or not hasattr(base, "vision_tower") \
                or not hasattr(base, "pixel_shuffle"):
            raise ValueError(f"{type(model).__name__} has no .model.get_image_features/.vision_tower/.pixel_shuffle: "
                             "not a transformers InternVL model")
        internvit_layers(base.vision_tower)

    def remove(self) -> None:
        super().remove()
        self._scores = None

    # -- the signal ----------------------------------------------------------
    def feature_settings(self, arguments: Dict[str, Any]) -> Tuple[Any, str]:
        return resolve_feature_settings(self.model.config, arguments, "default",
                                        "with 'full' the [CLS] token is a feature and has no [CLS] attention score")

    def signal_module(self, arguments: Dict[str, Any]) -> nn.Module:
        layers = internvit_layers(self.base.vision_tower)
        layer, _ = self.feature_settings(arguments)
        return layers[selected_layer(layer, len(layers))].attention

    def merged_scores(self, arguments: Dict[str, Any], seen: Dict[str, Any]) -> torch.Tensor:
        """[tiles, (s/2)^2] float32: per merged token, the mean [CLS] attention of the patches the pixel shuffle merged."""
        hidden = captured_argument(seen, "hidden_states", 0, "the selected InternViT layer's attention")  # [T, 1+N, C]
        with torch.no_grad():
            cls_attn = internvit_cls_attention(self.signal_module(arguments), hidden)  # [T, N]
            tiles, patches = cls_attn.shape
            side = int(round(patches ** 0.5))
            if side * side != patches:
                raise ValueError(f"{patches} patches per tile do not form a square grid")
            shuffled = self.base.pixel_shuffle(cls_attn.reshape(tiles, side, side, 1),
                                               scale_factor=self.model.config.downsample_ratio)  # [T, s/2, s/2, 4]
            return shuffled.reshape(tiles, -1, shuffled.shape[-1]).mean(dim=-1)  # [T, (s/2)^2]

    # -- get_image_features: score and remember (pruning waits for input_ids) --
    def _get_image_features(self, original, signature, args, kwargs):
        arguments = bind_arguments(signature, args, kwargs)
        with capture_input(self.signal_module(arguments)) as seen:
            outputs = original(*args, **kwargs)
        pooled = getattr(outputs, "pooler_output", None)
        if not isinstance(pooled, torch.Tensor) or pooled.dim() != 3:
            raise ValueError("HoloV pruning needs get_image_features(..., return_dict=True) returning "
                             "pooler_output [tiles, tokens, D]")
        scores = self.merged_scores(arguments, seen)
        if tuple(scores.shape) != tuple(pooled.shape[:2]):
            raise RuntimeError(f"scores {tuple(scores.shape)} do not match the tile features {tuple(pooled.shape[:2])}")
        self._results.clear()
        # a strong reference to the latest encoding only (bounded): generate's beam expansion replaces the
        # tensor by a rebuilt one, whose tiles are matched against it
        self._scores = (pooled, scores)
        return outputs

    def scores_for(self, pooled: torch.Tensor) -> torch.Tensor:
        """The remembered scores of ``pooled``: the encoded tensor itself, or one that generate's
        expansion for beams rebuilt from its tiles (each sample's tiles repeated), matched tile
        by tile on exact equality."""
        stored = self._scores[0] if self._scores is not None else None
        if stored is not None:
            scores = self._scores[1]
            if pooled is stored:
                return scores
            if pooled.shape[1:] == stored.shape[1:]:
                found = []
                for tile in pooled:
                    match = [j for j in range(stored.shape[0]) if torch.equal(stored[j], tile)]
                    if not match:
                        break
                    found.append(match[0])
                else:
                    return scores[torch.tensor(found, dtype=torch.long, device=scores.device)]
        raise ValueError("these image features were not computed by this model's get_image_features while pruning "
                         "was applied (user-supplied mm_encoder_outputs, or a chunked prefill that sliced them); "
                         "pass pixel_values instead")

    def prune_encoded(self, arguments: Dict[str, Any], outputs, seen: Dict[str, Any]) -> List[PrunedImage]:  # pragma: no cover
        raise NotImplementedError("InternVL prunes at the prefill, where input_ids tell which tiles form an image")

    def prune_image(self, tiles: torch.Tensor, scores: torch.Tensor) -> PrunedImage:
        """tiles [t, n, D], scores [t, n] of one image -> its PrunedImage (offsets into its t * n run)."""
        count, n = int(tiles.shape[0]), int(tiles.shape[1])
        side = int(round(n ** 0.5))
        grid = (side, side) if side * side == n else None
        budgets = self.config.split_budget([n] * count)
        vectors, offsets = [], []
        for t, keep in enumerate(budgets):
            kept, index = prune_part(tiles[t:t + 1], scores[t:t + 1], self.config, keep=keep, grid=grid)
            vectors.append(kept[0])
            offsets.append(torch.where(index[0] >= 0, t * n + index[0], index[0]))
        offsets_all = torch.cat(offsets)
        return PrunedImage(vectors=torch.cat(vectors), offsets=offsets_all, index=offsets_all, num_tokens=count * n,
                           grid=grid, parts=[grid] * count if grid is not None else None)

    # -- forward plumbing ----------------------------------------------------
    def _prefill(self, original, arguments: Dict[str, Any], encoded: Dict[str, Any]):
        pooled = encoded["image"].pooler_output  # [tiles, n, D]
        scores = self.scores_for(pooled)
        input_ids = arguments.get("input_ids")
        if input_ids is None:
            raise ValueError("HoloV pruning needs input_ids with the image placeholder tokens (got inputs_embeds only)")
        n = int(pooled.shape[1])
        runs = image_token_runs(input_ids == self.image_token_id)
        if any(run % n for run in runs) or sum(runs) != pooled.shape[0] * n:
            raise ValueError(f"image token runs {runs} are not whole numbers of {n}-token tiles of the {pooled.shape[0]} "
                             "encoded tiles: Image features and image tokens do not match")
        per_image, results, start = [], [], 0
        for run in runs:  # one image per run of image tokens, its tiles in order (thumbnail last)
            count = run // n
            tiles = pooled[start:start + count]
            feats = tiles.reshape(count * n, -1)
            result = self.prune_image(tiles, scores[start:start + count])
            self._remember(feats, result)
            per_image.append(feats)
            results.append(result)
            start += count
        images = type(encoded["image"])(pooler_output=per_image)

        def run_original(**new):  # the model concatenates nothing: it wants one tensor of all kept vectors
            image = new["mm_encoder_outputs"]["image"]
            kept = torch.cat(list(image.pooler_output))[None]  # [1, sum K, D]
            new["mm_encoder_outputs"] = {**new["mm_encoder_outputs"], "image": type(image)(pooler_output=kept)}
            return original(**new)

        try:
            return super()._prefill(run_original, arguments, {**encoded, "image": images})
        finally:
            self._results.clear()

    def encode_images(self, arguments: Dict[str, Any]):
        """``InternVLModel.forward``'s own call on pixel_values."""
        return self.base.get_image_features(
            pixel_values=arguments["pixel_values"], vision_feature_layer=arguments.get("vision_feature_layer"),
            vision_feature_select_strategy=arguments.get("vision_feature_select_strategy"), return_dict=True)

    def original_positions(self, arguments: Dict[str, Any]) -> torch.Tensor:
        """What the unpatched language model uses without position_ids on an empty cache: 0..L-1."""
        ids = arguments["input_ids"]
        batch, length = ids.shape
        return torch.arange(length, device=ids.device).expand(batch, length)
