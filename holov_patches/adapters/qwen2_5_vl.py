"""Adapter for transformers' ``Qwen2_5_VLForConditionalGeneration`` (model_type
``"qwen2_5_vl"``); the current transformers classes are hooked, no modeling file is copied.

Where: after the vision merger, per image, on that image's own merged tokens (each image of
a prompt or a batch gets its own budget: ``ratio`` of its own token count, or ``keep`` = K).

Signal (HoloV's Qwen2.5-VL variant, NeurIPS 2025, arXiv 2510.02912): the attention each
patch RECEIVES in the last vision block: the block's full (per-image) attention map, mean
over queries and heads. It is recomputed from the block's input, captured by a temporary
pre-hook on ``blocks[-1].attn``, with the block's own ``qkv`` projection and its rotary
embedding (SDPA stays on for the model; queries are processed in chunks, so no full map of
a large image is held). The vision tower runs on patches in WINDOW order; the scores are
put back in RASTER order with the model's own window index (the authors' code keeps window
order, which pairs scores with the wrong tokens), then averaged over each 2x2 spatial-merge
group, giving one score per merged token in the order of the merger output. The pruner
gets the merged grid (h/2, w/2).

Positions: the 3-D mrope position ids are computed ONCE on the unpruned sequence
(``generate`` does it before the prefill; a plain forward uses the model's own
``compute_3d_position_ids`` / ``get_rope_index``) and the kept tokens keep theirs;
nothing is recomputed on the pruned sequence. ``position_ids='compact'`` is refused: the
unpatched model numbers an image by its (t, h, w) grid, and K kept tokens of an h x w image
form no grid, so "what the model computes for the pruned sequence" does not exist (numbering
them 0..K-1 as text would drop the 2-D layout the model was trained on). With
``position_ids`` None this family keeps original positions whatever the method or mode (the
config's compact default describes the authors' LLaVA code, which has no M-RoPE).
``mm_token_type_ids`` is gathered the same way. Decoding steps get positions continuing
from the original ones (``generate`` appends them; the adapter supplies them when a caller
gives none), so the model's ``rope_deltas`` (which describe the unpruned prompt) are never
applied to the pruned cache through the patched forward. Videos are passed through unpruned.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from holov_patches.adapters.base import PrunedImage, SequencePruningAdapter, captured_argument, prune_part

_MAX_SCORE_ELEMENTS = 1 << 24  # attention probabilities held at once while scoring (64 MiB of float32)


def attention_received(query: torch.Tensor, key: torch.Tensor, scaling: float, lengths: Sequence[int]) -> torch.Tensor:
    """query, key [S, H, hd] of consecutive segments of ``lengths`` tokens -> [S] float32: per
    token, the softmax attention it receives inside its segment, mean over queries and heads."""
    heads = query.shape[1]
    scores = []
    start = 0
    for n in lengths:
        q = query[start:start + n].transpose(0, 1).float()  # [H, n, hd]
        k = key[start:start + n].transpose(0, 1).float()  # [H, n, hd]
        total = q.new_zeros(n)
        step = max(1, _MAX_SCORE_ELEMENTS // (heads * n))
        for q0 in range(0, n, step):
            probs = torch.softmax(torch.matmul(q[:, q0:q0 + step], k.transpose(1, 2)) * scaling, dim=-1)  # [H, c, n]
            total += probs.sum(dim=(0, 1))
        scores.append(total / (heads * n))
        start += n
    return torch.cat(scores)


class Qwen2_5_VLAdapter(SequencePruningAdapter):
    """Prunes each image's merged tokens by the attention they receive in the last vision block."""

    family = "qwen2_5_vl"
    family_name = "Qwen2.5-VL"
    extra_columns = (("mm_token_type_ids", 0),)
    image_inputs = ("pixel_values",)

    def check_model(self, model: nn.Module) -> None:
        visual = getattr(getattr(model, "model", None), "visual", None)
        if visual is None or not hasattr(visual, "blocks") or not hasattr(visual.blocks[-1].attn, "qkv"):
            raise ValueError(f"{type(model).__name__} has no .model.visual.blocks[-1].attn.qkv: not a transformers "
                             f"{self.family_name} model")

    def resolve_positions(self, config) -> str:
        """Always 'original'; an explicit 'compact' raises (see the module docstring)."""
        if config.position_ids == "compact":
            raise ValueError(f"position_ids='compact' is not supported for {self.family}: M-RoPE numbers an image by its "
                             "(t, h, w) grid and the kept tokens form no grid; use position_ids='original' or None "
                             "(both keep each kept token's original 3-D position)")
        return "original"

    def signal_module(self, arguments: Dict[str, Any]) -> nn.Module:
        return self.base.visual.blocks[-1].attn

    def raster_scores(self, seen: Dict[str, Any], grid_thw: torch.Tensor) -> torch.Tensor:
        """[merged tokens of all images] float32 scores, in the raster order of the merger output."""
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
        from transformers.vision_utils import get_vision_window_index

        visual = self.base.visual
        attn = visual.blocks[-1].attn
        hidden = captured_argument(seen, "hidden_states", 0, "the last vision block's attention")  # [S, C], normed, window order
        cos, sin = captured_argument(seen, "position_embeddings", 2, "the last vision block's attention")
        seq = hidden.shape[0]
        with torch.no_grad():
            query, key, _ = attn.qkv(hidden).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # [S, H, hd] each
            query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
            frames = grid_thw[:, 1] * grid_thw[:, 2]  # patches per frame
            lengths = torch.repeat_interleave(frames, grid_thw[:, 0]).tolist()  # one full-attention segment per frame
            received = attention_received(query, key, attn.scaling, lengths)  # [S] window order
            unit = visual.spatial_merge_size ** 2
            merged = received.view(-1, unit).mean(dim=1)  # [S / unit] one score per 2x2 merge group, window order
            window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                                      window_size=visual.window_size, patch_size=visual.patch_size)
            return merged[torch.argsort(window_index.to(merged.device))]  # raster order, as the merger output

    def prune_encoded(self, arguments: Dict[str, Any], outputs, seen: Dict[str, Any]) -> List[PrunedImage]:
        grid_thw = arguments.get("image_grid_thw")
        if grid_thw is None:
            raise ValueError(f"{self.family_name} needs image_grid_thw with pixel_values")
        if bool((grid_thw[:, 0] != 1).any()):
            raise ValueError(f"image_grid_thw={grid_thw.tolist()}: images must have t=1 (a still image); "
                             "videos go through pixel_values_videos and are not pruned")
        scores = self.raster_scores(seen, grid_thw)
        merge = self.base.visual.spatial_merge_size
        features = list(outputs.pooler_output)  # per image [n_i, D]
        sizes = [int(f.shape[0]) for f in features]
        if sum(sizes) != scores.numel():
            raise ValueError(f"{scores.numel()} scores for {sum(sizes)} merged image tokens")
        results = []
        for feats, signal, (_, h, w) in zip(features, scores.split(sizes), grid_thw.tolist()):
            grid = (h // merge, w // merge)
            kept, index = prune_part(feats[None], signal[None], self.config, grid=grid)
            results.append(PrunedImage(vectors=kept[0], offsets=index[0], index=index[0], num_tokens=feats.shape[0],
                                       grid=grid))
        return results

    def encode_images(self, arguments: Dict[str, Any]):
        """``Qwen2_5_VLModel.forward``'s own call on pixel_values."""
        return self.base.get_image_features(arguments["pixel_values"], arguments.get("image_grid_thw"), return_dict=True)

    def _prefill(self, original, arguments: Dict[str, Any], encoded: Dict[str, Any]):
        """A plain forward given both ``pixel_values`` and ``pixel_values_videos``: the images
        arrive here pre-encoded (``mm_encoder_outputs``), and the unpatched forward refuses
        ``pixel_values_videos`` next to ``mm_encoder_outputs``, so the videos are encoded here
        with the model's own call (exactly what its forward does) and passed through unpruned."""
        videos = arguments.get("pixel_values_videos")
        if videos is not None and encoded.get("video") is None:
            encoded = {**encoded, "video": self.base.get_video_features(videos, arguments.get("video_grid_thw"),
                                                                        return_dict=True)}
            arguments = {**arguments, "pixel_values_videos": None, "mm_encoder_outputs": encoded}
        return super()._prefill(original, arguments, encoded)

    def original_positions(self, arguments: Dict[str, Any]) -> torch.Tensor:
        """The 3-D positions the unpatched model computes for the UNPRUNED sequence."""
        ids = arguments["input_ids"]
        positions = self.base.compute_3d_position_ids(
            input_ids=ids, image_grid_thw=arguments.get("image_grid_thw"), video_grid_thw=arguments.get("video_grid_thw"),
            second_per_grid_ts=arguments.get("second_per_grid_ts"), inputs_embeds=None,
            attention_mask=arguments.get("attention_mask"), cache=arguments.get("cache"),
            mm_token_type_ids=arguments.get("mm_token_type_ids"))
        if positions is None:  # no mm_token_type_ids: the text model's own default, 0..L-1 on all three axes
            batch, length = ids.shape
            positions = torch.arange(length, device=ids.device).view(1, 1, -1).expand(3, batch, length)
        return positions
