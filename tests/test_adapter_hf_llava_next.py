"""holov_patches.apply on transformers' LlavaNextForConditionalGeneration (anyres; tiny, CPU).

What is checked: undoable per-instance patch (bit-identical when off / removed), K = all
tokens in improved mode is bit-identical (newlines of every row kept); faithful mode drops
every image_newline, improved mode keeps exactly the newlines of rows that keep a token,
right after that row's last kept token; the per-image budget (ratio per part, absolute K
split); the high-res signal follows the stitched and unpadded 2-D layout (checked against
eager [CLS] attention with an independent index formula) and the pruner gets the grids;
original position ids (position_ids="original"); the pruned run equals the masked full
model through generate; batch 2 with different image sizes and two images per prompt.
"""
from __future__ import annotations

import pytest
import torch

import holov_patches
from holov_patches.adapters.apply import adapter_methods
from holov_patches import PruningConfig

from adapter_helpers import (assert_decode_matches_masked_model, assert_keep_all_and_removed_are_bit_identical,
                             generate_or_skip, image_runs, left_padded_prompts, lm_inputs, masked_reference,
                             pruned_generate_and_forward, scratch_registry, tiny_clip_and_llama, topk_raster)

IMAGE = 100
PAD = 0
PATCHES = 16  # base view: 56 / 14 = 4 x 4
# image_sizes (H, W) -> stitched high-res map: (50, 100): 2 crops side by side, 4 x 8, no unpadding;
# (30, 112): same crops, unpadded to rows 1..2 -> 2 x 8; (100, 90): 2 x 2 crops, 8 x 8.
RUNS = {(50, 100): 16 + 4 * 9, (30, 112): 16 + 2 * 9, (100, 90): 16 + 8 * 9}


@pytest.fixture(scope="module")
def model():
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    vision, text = tiny_clip_and_llama(max_position_embeddings=512, pad_token_id=PAD)
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-2,
                          vision_feature_select_strategy="default",
                          image_grid_pinpoints=[[56, 112], [112, 56], [112, 112]])
    return LlavaNextForConditionalGeneration(cfg).eval()


def make_inputs(rows, seed=1):
    """rows: list of lists of image sizes; one prompt per row, left-padded to a common length."""
    torch.manual_seed(seed)
    ids = left_padded_prompts(rows, lambda size: [IMAGE] * RUNS[size], PAD)
    sizes = [size for images in rows for size in images]
    pixel_values = torch.randn(len(sizes), 5, 3, 56, 56)  # 5 = most crops any image uses (2 x 2 + base)
    return dict(input_ids=ids, attention_mask=(ids != PAD).long(), pixel_values=pixel_values,
                image_sizes=torch.tensor(sizes))


@pytest.fixture
def scratch(monkeypatch):
    """Register test pruners for this test only (removed again by monkeypatch)."""
    return scratch_registry(monkeypatch)


@torch.no_grad()
def test_off_removed_and_keep_all_are_bit_identical(model, scratch):
    inputs = make_inputs([[(50, 100)], [(100, 90)]])
    keep_all = PruningConfig(method=scratch("t_topk", topk_raster), keep=1000, mode="improved")
    assert_keep_all_and_removed_are_bit_identical(model, inputs, keep_all, PruningConfig(method="cls_topk", keep=8),
                                                  pad=PAD)


@pytest.mark.parametrize("mode", ["faithful", "improved"])
@torch.no_grad()
def test_newlines_and_budget_per_mode(model, scratch, mode):
    sizes = [(50, 100), (30, 112)]
    inputs = make_inputs([sizes])
    ratio = 0.5
    config = PruningConfig(method=scratch("t_topk", topk_raster), ratio=ratio, mode=mode)
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        model(**inputs)
        record = handle.last_prefill
    width = 8 + 1  # high-res row: 8 tokens and its newline
    lines_kept = 0
    for offsets, rows in zip(record.offsets, (4, 2)):
        is_line = (offsets >= PATCHES) & ((offsets - PATCHES) % width == width - 1)
        real = offsets[~is_line]
        assert (real < PATCHES).sum() == round(PATCHES * (1 - ratio))  # base: its own ratio
        assert (real >= PATCHES).sum() == round(rows * 8 * (1 - ratio))  # high-res: its own ratio
        lines_kept += int(is_line.sum())
        if mode == "faithful":
            assert not is_line.any()
            continue
        assert torch.equal(offsets, offsets.sort().values)  # raster order: each newline right after its row
        kept_rows = torch.unique((real[real >= PATCHES] - PATCHES) // width)
        assert torch.equal(torch.unique((offsets[is_line] - PATCHES) // width), kept_rows)
        assert 0 < kept_rows.numel() <= rows
    newline = model.model.image_newline
    embeds = seen[0]["inputs_embeds"][0]  # [L', D] what the LLM sees for row 0
    is_newline_vector = torch.isclose(embeds, newline, atol=1e-6).all(dim=-1)  # [L']
    assert int(is_newline_vector.sum()) == lines_kept
    assert (lines_kept == 0) == (mode == "faithful")


@torch.no_grad()
def test_absolute_keep_is_split_between_base_and_high_res(model, scratch):
    inputs = make_inputs([[(50, 100)], [(30, 112)]])
    keep = 12
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=keep)) as handle:
        model(**inputs)
        record = handle.last_prefill
    calls = scratch.calls
    for image, (n_hires, offsets) in enumerate(zip((32, 16), record.offsets)):
        base_call, hires_call = calls[2 * image], calls[2 * image + 1]
        assert base_call["keep"] == round(keep * PATCHES / (PATCHES + n_hires))
        assert base_call["keep"] + hires_call["keep"] == keep == offsets.numel()
    assert record.num_pruned == sum(RUNS[s] for s in [(50, 100), (30, 112)]) - 2 * keep


@torch.no_grad()
def test_high_res_signal_follows_the_stitched_unpadded_layout(model, scratch):
    inputs = make_inputs([[(50, 100), (30, 112)]])
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=6)):
        model(**inputs)
    calls = scratch.calls
    tower = model.model.vision_tower
    views = torch.cat([inputs["pixel_values"][i, :3] for i in range(2)])  # base + 2 crops per image
    tower.set_attn_implementation("eager")
    try:
        cls = tower(views, output_attentions=True).attentions[-2][:, :, 0, 1:].mean(dim=1)  # [6, 16]
    finally:
        tower.set_attn_implementation("sdpa")
    for image, (rows, first_row) in enumerate(((4, 0), (2, 1))):
        base_call, hires_call = calls[2 * image], calls[2 * image + 1]
        crop = cls[3 * image: 3 * image + 3]
        assert base_call["grid"] == (4, 4) and torch.allclose(base_call["cls_attn"][0], crop[0], atol=1e-6)
        assert hires_call["grid"] == (rows, 8)
        r = torch.arange(rows)[:, None] + first_row  # row of the stitched 4 x 8 map (unpadding drops row 0)
        c = torch.arange(8)[None, :]
        expected = crop[1 + c // 4, (r % 4) * 4 + c % 4]  # crops side by side, each 4 x 4
        assert torch.allclose(hires_call["cls_attn"][0], expected.reshape(-1), atol=1e-6)


@torch.no_grad()
def test_positions_are_original_and_pruned_run_equals_masked_full_model(model, scratch):
    inputs = make_inputs([[(50, 100)], [(100, 90)]])
    steps = 3
    config = PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.6, mode="improved", position_ids="original")
    out, record, _, plain = pruned_generate_and_forward(model, config, inputs, pad=PAD, steps=steps)
    for (b, start, _), offsets, size in zip(image_runs(inputs["input_ids"], IMAGE), plain.offsets,
                                            [(50, 100), (100, 90)]):
        slots = (plain.source[b] >= start) & (plain.source[b] < start + RUNS[size])  # this image's kept slots
        assert torch.equal(plain.position_ids[b, slots], start + offsets)  # plain forward: positions 0..L-1
    mask = masked_reference(inputs, record, IMAGE)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # generate's positions
    assert_decode_matches_masked_model(model, out, inputs, mask, positions, steps=steps,
                                       image_keys=("pixel_values", "image_sizes"))


@pytest.mark.parametrize("mode", ["faithful", "improved"])
@pytest.mark.parametrize("method", adapter_methods())  # the others are refused (test_method_contract)
@torch.no_grad()
def test_every_method_generates_with_two_images_and_batch_two(model, method, mode):
    inputs = make_inputs([[(50, 100), (30, 112)], [(100, 90)]])
    config = PruningConfig(method=method, ratio=0.75, mode=mode)
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        out = generate_or_skip(model, method, inputs, pad=PAD)
        record = handle.last_prefill
    lengths = [step["inputs_embeds"].shape[1] for step in seen]  # prefill, then one per decode step
    length = inputs["input_ids"].shape[1]
    lost = length - (record.source >= 0).sum(dim=1)  # per row
    assert lengths[0] == length - int(lost.min()) and lengths[1:] == [1, 1]
    assert int(lost.sum()) == record.num_pruned > 0
    assert out.shape == (2, length + 3) and torch.equal(out[:, :length], inputs["input_ids"])
