"""holov_patches.apply on transformers' Qwen3VLForConditionalGeneration (tiny random model, CPU).

What is checked (as for Qwen2-VL, tests/test_adapter_qwen2_vl.py, plus DeepStack): undoable
per-instance patch (bit-identical when off / removed, the video seam included); K = all
tokens is bit-identical (forward and generate); each image is pruned on its own merged
tokens with its own budget and merged grid; the signal is the attention each patch RECEIVES
in the last vision block, checked against an explicit eager map; kept tokens keep their 3-D
M-RoPE positions; the DeepStack rows the language model receives are, at every level, the
rows at the kept offsets, and its visual position mask is the kept placeholders; the pruned
run equals (a) the unpatched model on the full sequence with the pruned tokens masked out
(prefill and decode; a masked token's DeepStack injection only touches its own hidden
state, which nothing attends to) and (b) the unpatched model fed the pruned ids with the
kept features and the kept DeepStack rows passed in and the original positions; wrong
DeepStack rows would be seen; batch 2 with left padding and two images in one prompt for
every method the adapters run; videos pass through unpruned (their DeepStack rows too).
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import holov_patches
from holov_patches import PruningConfig
from holov_patches.adapters.apply import ADAPTERS, adapter_methods

from adapter_helpers import (assert_decode_matches_masked_model, assert_keep_all_and_removed_are_bit_identical,
                             assert_kept_columns_match, generate_or_skip, image_runs, left_padded_prompts, lm_inputs,
                             masked_reference, pruned_generate_and_forward, scratch_registry, topk_raster)

PAD, START, END, IMAGE, VIDEO = 0, 148, 149, 150, 151
GRIDS = [(1, 8, 12), (1, 6, 4)]  # (t, h, w) patches -> merged 4 x 6 and 3 x 2
PATCH = 3 * 2 * 4 * 4  # channels x temporal patch x patch x patch
LEVELS = 2  # DeepStack levels (vision blocks 0 and 1), injected after text layers 0 and 1


def build(depth: int = 3, deepstack=(0, 1)):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         pad_token_id=PAD, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                            "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64, num_position_embeddings=64,
                           deepstack_visual_indexes=list(deepstack)),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random DeepStack mergers are small; make their injection clearly visible in the logits
        for merger in model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def model():
    return build()


def make_inputs(rows, seed=1):
    """rows: list of lists of grids (t, h, w); one prompt per row, left-padded."""
    torch.manual_seed(seed)
    ids = left_padded_prompts(rows, lambda grid: [START] + [IMAGE] * (grid[1] * grid[2] // 4) + [END], PAD)
    grid_thw = torch.tensor([grid for images in rows for grid in images])  # [images, 3] (t, h, w)
    return dict(input_ids=ids, attention_mask=(ids != PAD).long(), mm_token_type_ids=(ids == IMAGE).long(),
                image_grid_thw=grid_thw, pixel_values=torch.randn(int(grid_thw.prod(-1).sum()), PATCH))


@pytest.fixture
def scratch(monkeypatch):
    """Register test pruners for this test only (removed again by monkeypatch)."""
    return scratch_registry(monkeypatch)


@contextmanager
def deepstack_inputs(model):
    """Capture the language model's visual_pos_masks and deepstack_visual_embeds, one dict per call."""
    seen = []

    def hook(_module, args, kwargs):
        seen.append({k: kwargs.get(k) for k in ("visual_pos_masks", "deepstack_visual_embeds", "inputs_embeds")})

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def full_features(model, inputs):
    """The unpatched get_image_features of inputs: (per image [n, D], per level per image [n, D])."""
    out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    return list(out.pooler_output), [list(level) for level in out.deepstack_features]


def test_registered_for_qwen3_vl():
    assert ADAPTERS["qwen3_vl"].__module__.endswith("qwen3_vl") and ADAPTERS["qwen3_vl"].family == "qwen3_vl"


@torch.no_grad()
def test_off_removed_and_keep_all_are_bit_identical(model, scratch):
    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    logits = model(**inputs).logits
    for off in (None, PruningConfig(method="none")):
        with holov_patches.apply(model, off) as handle:
            assert not handle.active and "forward" not in model.__dict__
            assert torch.equal(model(**inputs).logits, logits)
    keep_all = PruningConfig(method=scratch("t_topk", topk_raster), keep=1000)
    assert_keep_all_and_removed_are_bit_identical(model, inputs, keep_all, PruningConfig(method="cls_topk", keep=2),
                                                  pad=PAD)
    assert "get_video_features" not in model.model.__dict__


@torch.no_grad()
def test_each_image_gets_its_own_budget_and_grid(model, scratch):
    inputs = make_inputs([GRIDS])
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.5)) as handle:
        model(**inputs)
        record = handle.last_prefill
    assert [(c["tokens"].shape[1], c["keep"], c["grid"]) for c in scratch.calls] == [(24, 12, (4, 6)), (6, 3, (3, 2))]
    assert [o.numel() for o in record.offsets] == [12, 3] and record.num_pruned == 15
    scratch.calls.clear()
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=4)) as handle:
        model(**inputs)
    assert [c["keep"] for c in scratch.calls] == [4, 4] and handle.removed


@torch.no_grad()
def test_signal_is_received_attention_of_last_block(scratch):
    small = build(depth=2, deepstack=(0,))  # the signal comes from block 1 (the last), not the DeepStack block 0
    inputs = make_inputs([GRIDS])
    with holov_patches.apply(small, PruningConfig(method=scratch("t_topk", topk_raster), keep=3)):
        small(**inputs)
    signals = [c["cls_attn"][0] for c in scratch.calls]

    visual = small.model.visual
    block = visual.blocks[-1]
    seen = {}
    hook = block.register_forward_pre_hook(lambda _m, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    try:
        visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        hook.remove()
    hidden = block.norm1(seen["args"][0])  # [S, C] the last block's attention input, in the merger's order
    cos, sin = seen["kwargs"]["position_embeddings"]
    attn = block.attn
    heads = attn.num_heads
    q, k, _ = attn.qkv(hidden).reshape(len(hidden), 3, heads, -1).permute(1, 0, 2, 3).unbind(0)

    def rotate(x):
        half = x.shape[-1] // 2
        return torch.cat([-x[..., half:], x[..., :half]], dim=-1)

    q = q * cos[:, None] + rotate(q) * sin[:, None]
    k = k * cos[:, None] + rotate(k) * sin[:, None]
    start = 0
    for (_, h, w), signal in zip(GRIDS, signals):
        n = h * w
        qi, ki = q[start:start + n].transpose(0, 1), k[start:start + n].transpose(0, 1)  # [H, n, hd]
        full_map = torch.softmax(qi @ ki.transpose(1, 2) * attn.scaling, dim=-1)  # [H, n, n] eager, explicit
        received = full_map.mean(dim=(0, 1))  # [n] mean over heads and queries
        expected = received.view(-1, 4).mean(dim=1)  # one score per 2x2 merge group
        assert torch.allclose(signal, expected, atol=1e-6)
        start += n
    # attention across images would change the scores: each image is its own full-attention segment
    qa, ka = q.transpose(0, 1), k.transpose(0, 1)
    joint = torch.softmax(qa @ ka.transpose(1, 2) * attn.scaling, dim=-1).mean(dim=(0, 1)).view(-1, 4).mean(dim=1)
    assert not torch.allclose(torch.cat(signals), joint, atol=1e-6)


@torch.no_grad()
def test_kept_tokens_keep_their_3d_rope_positions(model, scratch):
    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.5)) as handle:
        model(**inputs)
        record = handle.last_prefill
    reference, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])  # [3, B, L] unpruned
    positions = record.position_ids
    assert positions.shape == (3, 2, record.source.shape[1])
    valid = record.source >= 0
    gathered = reference.gather(2, record.source.clamp(min=0).expand(3, -1, -1))
    assert torch.equal(positions[:, valid], gathered[:, valid])  # every kept column keeps its position
    for (b, start, n), offsets, (_, _, w) in zip(image_runs(inputs["input_ids"], IMAGE), record.offsets,
                                                 GRIDS + [(1, 4, 4)]):
        slots = (record.source[b] >= start) & (record.source[b] < start + n)  # this image's kept slots
        assert torch.equal(record.source[b, slots] - start, offsets)
        p0 = reference[0, b, start]  # an image's temporal position is its start position
        kept_pos = positions[:, b, slots]  # [3, K]
        assert torch.equal(kept_pos[0], p0.expand(offsets.numel()))
        assert torch.equal(kept_pos[1], p0 + offsets // (w // 2))  # row in the merged grid
        assert torch.equal(kept_pos[2], p0 + offsets % (w // 2))  # column in the merged grid


@torch.no_grad()
def test_deepstack_rows_are_the_kept_rows_of_every_level(model, scratch):
    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    _, levels = full_features(model, inputs)
    assert len(levels) == LEVELS
    for run in (lambda: model(**inputs), lambda: model.generate(**inputs, max_new_tokens=2, do_sample=False,
                                                                pad_token_id=PAD)):
        with deepstack_inputs(model) as seen, \
                holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.5)) as handle:
            run()
            record = handle.last_prefill
        prefill = seen[0]
        pruned_ids = torch.where(record.source >= 0, inputs["input_ids"].gather(1, record.source.clamp(min=0)), PAD)
        assert torch.equal(prefill["visual_pos_masks"], pruned_ids == IMAGE)  # the kept placeholders, nothing else
        embeds = prefill["deepstack_visual_embeds"]
        assert len(embeds) == LEVELS
        for level, level_embeds in zip(levels, embeds):  # the SAME offsets select the rows of every level
            expected = torch.cat([image[offsets] for image, offsets in zip(level, record.offsets)])
            assert torch.equal(level_embeds, expected)
        assert all(step["deepstack_visual_embeds"] is None for step in seen[1:])  # decoding injects nothing


def zero_padding_topk(tokens, cls_attn, keep, *, grid=None):
    """Test pruner: top-(K-1) in raster order, then one zero pad (index -1), as faithful HoloV pads."""
    kept, index = topk_raster(tokens, cls_attn, keep - 1, grid=grid)
    pad = tokens.new_zeros(tokens.shape[0], 1, tokens.shape[2])
    return torch.cat([kept, pad], 1), torch.cat([index, index.new_full((index.shape[0], 1), -1)], 1)


@torch.no_grad()
def test_a_zero_pad_gets_zero_deepstack_rows(model, scratch):
    inputs = make_inputs([GRIDS])
    _, levels = full_features(model, inputs)
    with deepstack_inputs(model) as seen, \
            holov_patches.apply(model, PruningConfig(method=scratch("t_pad", zero_padding_topk), keep=4)) as handle:
        model(**inputs)
        record = handle.last_prefill
    assert [o[-1].item() for o in record.offsets] == [-1, -1]
    for level, level_embeds in zip(levels, seen[0]["deepstack_visual_embeds"]):
        rows = level_embeds.split([4, 4])
        for image, offsets, got in zip(level, record.offsets, rows):
            assert torch.equal(got[:-1], image[offsets[:-1]]) and torch.equal(got[-1], torch.zeros_like(got[-1]))


@torch.no_grad()
def test_pruned_run_equals_masked_full_model_prefill_and_decode(model, scratch):
    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    steps = 3
    config = PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.6)
    out, record, prefill, plain = pruned_generate_and_forward(model, config, inputs, pad=PAD, steps=steps)
    mask = masked_reference(inputs, record, IMAGE)
    positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    assert_decode_matches_masked_model(model, out, inputs, mask, positions, steps=steps,
                                       image_keys=("pixel_values", "image_grid_thw"), grown_keys=("mm_token_type_ids",))
    ref = model(**{**inputs, "attention_mask": mask, "position_ids": positions}).logits
    assert torch.equal(plain.source, record.source)
    assert_kept_columns_match(prefill, ref, plain.source, inputs["attention_mask"])


@torch.no_grad()
def test_pruned_prefill_equals_unpatched_model_fed_the_kept_features(model, scratch):
    """The reference is the UNPATCHED model on the pruned ids, given the kept image features and the
    kept DeepStack rows (taken here from the full features at the kept offsets) and the original
    positions; DeepStack rows from other offsets change the logits, so the check sees them."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.5)) as handle:
        pruned = model(**inputs).logits
        record = handle.last_prefill
    pooled, levels = full_features(model, inputs)
    source = record.source
    ids = torch.where(source >= 0, inputs["input_ids"].gather(1, source.clamp(min=0)), PAD)
    mask = torch.where(source >= 0, inputs["attention_mask"].gather(1, source.clamp(min=0)), 0)
    positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    kept_positions = positions.gather(2, source.clamp(min=0).expand(3, -1, -1))

    def run(deepstack_offsets):
        encoded = BaseModelOutputWithDeepstackFeatures(
            pooler_output=[image[o] for image, o in zip(pooled, record.offsets)],
            deepstack_features=[[image[o] for image, o in zip(level, deepstack_offsets)] for level in levels])
        return model(input_ids=ids, attention_mask=mask, position_ids=kept_positions,
                     mm_token_type_ids=(ids == IMAGE).long(), image_grid_thw=inputs["image_grid_thw"],
                     mm_encoder_outputs={"image": encoded}).logits

    real = mask.bool()
    assert torch.allclose(pruned[real], run(record.offsets)[real], atol=1e-5)
    shifted = [o.roll(1) for o in record.offsets]  # the kept rows, paired with the wrong tokens
    assert not torch.allclose(pruned[real], run(shifted)[real], atol=1e-3)


@pytest.mark.parametrize("method", adapter_methods())  # the others are refused (test_method_contract)
@torch.no_grad()
def test_every_method_generates_with_two_images_and_batch_two(model, method):
    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    with lm_inputs(model) as seen, deepstack_inputs(model) as deep, \
            holov_patches.apply(model, PruningConfig(method=method, ratio=0.5)) as handle:
        out = generate_or_skip(model, method, inputs, pad=PAD)
        record = handle.last_prefill
    lengths = [step["inputs_embeds"].shape[1] for step in seen]  # prefill, then one per decode step
    length = inputs["input_ids"].shape[1]
    lost = length - (record.source >= 0).sum(dim=1)
    assert lost.tolist() == [12 + 3, 2]  # images of 24, 6 and 4 merged tokens keep 12, 3 and 2
    assert lengths[0] == length - 2 and lengths[1:] == [1, 1]  # rows padded to the longest pruned row
    assert [e.shape[0] for e in deep[0]["deepstack_visual_embeds"]] == [12 + 3 + 2] * LEVELS
    assert out.shape == (2, length + 3) and torch.equal(out[:, :length], inputs["input_ids"])


def video_inputs():
    """One prompt: an image of 24 merged tokens, then a 2-frame video (4 merged tokens per frame,
    each frame its own run, as Qwen3-VL's processor separates frames by timestamps)."""
    torch.manual_seed(2)
    frame = [START] + [VIDEO] * 4 + [END]
    ids = torch.tensor([[1, 5, START] + [IMAGE] * 24 + [END, 7, 3] + frame + [4] + frame + [9]])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                mm_token_type_ids=(ids == IMAGE).long() + 2 * (ids == VIDEO).long(),
                image_grid_thw=torch.tensor([GRIDS[0]]), pixel_values=torch.randn(8 * 12, PATCH),
                video_grid_thw=torch.tensor([(2, 4, 4)]), pixel_values_videos=torch.randn(2 * 4 * 4, PATCH))


@torch.no_grad()
def test_video_passes_through_unpruned_and_video_shaped_images_raise(model, scratch):
    inputs = video_inputs()
    ids = inputs["input_ids"]
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD)
    with holov_patches.apply(model, PruningConfig(method=scratch("t_all", topk_raster), keep=1000)):
        assert torch.equal(model(**inputs).logits, logits)  # keep-all with a video in the prompt: bit-identical
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD), generated)
    scratch.calls.clear()
    for run in (lambda: model(**inputs), lambda: model.generate(**inputs, max_new_tokens=2, pad_token_id=PAD)):
        with lm_inputs(model) as seen, deepstack_inputs(model) as deep, \
                holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=5)) as handle:
            run()
            record = handle.last_prefill
        assert [c["tokens"].shape[1] for c in scratch.calls] == [24]  # only the image reached the pruner
        assert seen[0]["inputs_embeds"].shape[1] == ids.shape[1] - (24 - 5)  # the 8 video tokens all stay
        assert (ids[0, record.source[0]] == VIDEO).sum() == 8
        assert [e.shape[0] for e in deep[0]["deepstack_visual_embeds"]] == [5 + 8] * LEVELS  # image and video rows
        scratch.calls.clear()
    # the pruned run with a video equals the unpatched model with the pruned image tokens masked out
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=5)) as handle:
        pruned = model(**inputs).logits
        record = handle.last_prefill
    positions, _ = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
                                              video_grid_thw=inputs["video_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    ref = model(**{**inputs, "attention_mask": masked_reference(inputs, record, IMAGE), "position_ids": positions}).logits
    assert_kept_columns_match(pruned, ref, record.source, inputs["attention_mask"])
    as_image = dict(input_ids=ids.masked_fill(ids == VIDEO, IMAGE), attention_mask=torch.ones_like(ids),
                    mm_token_type_ids=(ids == IMAGE).long() + (ids == VIDEO).long(),
                    image_grid_thw=torch.tensor([GRIDS[0], (2, 4, 4)]),
                    pixel_values=torch.cat([inputs["pixel_values"], inputs["pixel_values_videos"]]))
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=5)):
        with pytest.raises(ValueError, match="t=1"):
            model(**as_image)


def test_compact_positions_are_refused_and_original_is_the_default(model):
    with pytest.raises(ValueError, match=r"position_ids='compact' is not supported for qwen3_vl"):
        holov_patches.apply(model, PruningConfig(method="cls_topk", keep=2, position_ids="compact"))
    assert "forward" not in model.__dict__ and "get_video_features" not in model.model.__dict__
    for positions in (None, "original"):  # None keeps original positions whatever the method (no compact default)
        with holov_patches.apply(model, PruningConfig(method="cls_topk", keep=2, position_ids=positions)) as handle:
            assert handle.adapter.positions == "original"
