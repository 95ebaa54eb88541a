"""Adapter for transformers' ``Qwen2VLForConditionalGeneration`` (model_type ``"qwen2_vl"``);
the current transformers classes are hooked, no modeling file is copied.

Qwen2-VL is the Qwen2.5-VL family without window attention: every vision block attends over
the whole image (one full-attention segment per frame), there is no window permutation, and
the 3-D mrope index has no ``second_per_grid_ts``. Everything else is shared with
:class:`~holov_patches.adapters.qwen2_5_vl.Qwen2_5_VLAdapter`, which this class extends
(only the family differences are overridden here).

Where: after the vision merger, per image, on that image's own merged tokens (each image of
a prompt or a batch gets its own budget: ``ratio`` of its own token count, or ``keep`` = K).

Signal (the same rule as the Qwen2.5-VL adapter: HoloV's Qwen variant, NeurIPS 2025,
arXiv 2510.02912): the tower has no [CLS] token, so the [CLS]-like score of a patch is the
attention it RECEIVES in the last vision block: the block's full (per-image) attention map,
mean over queries and heads. It is recomputed from the block's input, captured by a
temporary pre-hook on ``blocks[-1].attn``, with the block's own ``qkv`` projection and its
rotary embedding (SDPA stays on for the model; queries are processed in chunks, so no full
map of a large image is held). Qwen2-VL's tower runs on patches in the processor's order
(raster order of the 2x2 merge units, the four patches of a unit consecutive), which is the
order of the merger output, so no un-permutation is needed: the scores are averaged over
each 2x2 spatial-merge group, giving one score per merged token. The pruner gets the merged
grid (h/2, w/2).

Positions: the 3-D mrope position ids are computed ONCE on the unpruned sequence
(``generate`` does it before the prefill; a plain forward uses the model's own
``compute_3d_position_ids`` / ``get_rope_index``) and the kept tokens keep theirs; nothing
is recomputed on the pruned sequence. ``position_ids='compact'`` is refused (the kept tokens
of an h x w image form no (t, h, w) grid to number). ``mm_token_type_ids`` is gathered the
same way. Decoding steps get positions continuing from the original ones, so the model's
``rope_deltas`` (which describe the unpruned prompt) are never applied to the pruned cache.
Videos (``pixel_values_videos``) are passed through unpruned; images with t > 1 raise.
"""
from __future__ import annotations

import importlib

from typing import Any, Dict

import torch

from holov_patches.adapters.base import captured_argument
from holov_patches.adapters.qwen2_5_vl import Qwen2_5_VLAdapter, attention_received


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    """Prunes each image's merged tokens by the attention they receive in the last (full-attention) vision block."""

    family = "qwen2_vl"
    family_name = "Qwen2-VL"
    modeling_module = "transformers.models.qwen2_vl.modeling_qwen2_vl"  # where the family's vision rotary lives

    def raster_scores(self, seen: Dict[str, Any], grid_thw: torch.Tensor) -> torch.Tensor:
        """[merged tokens of all images] float32 scores, in the order of the merger output."""
        apply_rotary_pos_emb_vision = importlib.import_module(self.modeling_module).apply_rotary_pos_emb_vision
        visual = self.base.visual
        attn = visual.blocks[-1].attn
        hidden = captured_argument(seen, "hidden_states", 0, "the last vision block's attention")  # [S, C] normed
        cos, sin = captured_argument(seen, "position_embeddings", 2, "the last vision block's attention")
        seq = hidden.shape[0]
        with torch.no_grad():
            query, key, _ = attn.qkv(hidden).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # [S, H, hd] each
            query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
            frames = grid_thw[:, 1] * grid_thw[:, 2]  # patches per frame
            lengths = torch.repeat_interleave(frames, grid_thw[:, 0]).tolist()  # one full-attention segment per frame
            received = attention_received(query, key, attn.scaling, lengths)  # [S], merger order
            unit = visual.spatial_merge_size ** 2
            return received.view(-1, unit).mean(dim=1)  # [S / unit] one score per 2x2 merge group

    def original_positions(self, arguments: Dict[str, Any]) -> torch.Tensor:
        """The 3-D positions the unpatched model computes for the UNPRUNED sequence."""
        ids = arguments["input_ids"]
        positions = self.base.compute_3d_position_ids(
            input_ids=ids, image_grid_thw=arguments.get("image_grid_thw"), video_grid_thw=arguments.get("video_grid_thw"),
            inputs_embeds=None, attention_mask=arguments.get("attention_mask"), cache=arguments.get("cache"),
            mm_token_type_ids=arguments.get("mm_token_type_ids"))
        if positions is None:  # no mm_token_type_ids: the text model's own default, 0..L-1 on all three axes
            batch, length = ids.shape
            positions = torch.arange(length, device=ids.device).view(1, 1, -1).expand(3, batch, length)
        return positions
