"""holov_patches.apply on transformers' LlavaOnevisionForConditionalGeneration (tiny random model, CPU).

What is checked: undoable per-instance patch (bit-identical when off / removed), K = all
tokens in improved mode is bit-identical (newlines of every row kept); faithful mode drops
every image_newline, improved mode keeps exactly the newlines of rows that keep a token;
the per-image budget (ratio per part, absolute K split by PruningConfig.split_budget); the
signal is the attention each patch RECEIVES in the selected SigLIP layer (checked against
eager attention maps), mapped through the stitched, unpadded layout and, where anyres_max
shrinks the map, through the same bilinear interpolation as the features (checked with an
independent index formula and F.interpolate); base-only images of a multi-image sample
(batch_num_images); original and compact positions; the pruned run equals the masked full
model through generate; batch 2 with two images in one prompt for every adapter method;
videos pass through unpruned; strategy 'default' is refused.
"""
from __future__ import annotations

import pytest
import torch

import holov_patches
from holov_patches import PruningConfig
from holov_patches.adapters.apply import ADAPTERS, adapter_methods

from adapter_helpers import (assert_decode_matches_masked_model, assert_keep_all_and_removed_are_bit_identical,
                             assert_kept_columns_match, generate_or_skip, image_runs, left_padded_prompts, lm_inputs,
                             masked_reference, pruned_generate_and_forward, scratch_registry, topk_raster)

IMAGE, VIDEO, PAD = 100, 101, 0
PATCHES = 16  # base view: 56 / 14 = 4 x 4
# vision_aspect_ratio "anyres_max_1": a high-res map of more than ~1.1 base views is shrunk bilinearly.
# image_sizes (H, W) -> packed run (base 16 + high-res rows x (cols + newline)):
# (50, 100): 2 crops side by side, 4 x 8, shrunk by sqrt(2) to 2 x 5;
# (30, 112): same crops, unpadded to rows 1..2 -> 2 x 8 (ratio 1: not shrunk);
# (100, 90): 2 x 2 crops, 8 x 8, shrunk to 4 x 4.
RUNS = {(50, 100): 16 + 2 * 6, (30, 112): 16 + 2 * 9, (100, 90): 16 + 4 * 5}
HIRES = {(50, 100): (2, 5), (30, 112): (2, 8), (100, 90): (4, 4)}


def build():
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=56, patch_size=14, vision_use_head=False)
    text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, pad_token_id=PAD)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
                               image_grid_pinpoints=[[56, 112], [112, 56], [112, 112]],
                               vision_aspect_ratio="anyres_max_1")  # vision_feature_layer -1, strategy 'full'
    return LlavaOnevisionForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return build()


def make_inputs(rows, seed=1, runs=None, **extra):
    """rows: list of lists of image sizes; one prompt per row, left-padded to a common length."""
    torch.manual_seed(seed)
    runs = RUNS if runs is None else runs
    ids = left_padded_prompts(rows, lambda size: [IMAGE] * runs[size], PAD)
    sizes = [size for images in rows for size in images]
    pixel_values = torch.randn(len(sizes), 5, 3, 56, 56)  # 5 = most views any image uses (2 x 2 + base)
    return dict(input_ids=ids, attention_mask=(ids != PAD).long(), pixel_values=pixel_values,
                image_sizes=torch.tensor(sizes), **extra)


@pytest.fixture
def scratch(monkeypatch):
    """Register test pruners for this test only (removed again by monkeypatch)."""
    return scratch_registry(monkeypatch)


def test_registered_for_llava_onevision():
    adapter = ADAPTERS["llava_onevision"]
    assert adapter.__module__.endswith("llava_onevision") and adapter.family == "llava_onevision"


@torch.no_grad()
def test_run_lengths_are_the_models_own(model):
    inputs = make_inputs([[(50, 100), (30, 112), (100, 90)]])
    features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    assert [f.shape[0] for f in features] == [RUNS[s] for s in [(50, 100), (30, 112), (100, 90)]]


@torch.no_grad()
def test_off_removed_and_keep_all_are_bit_identical(model, scratch):
    inputs = make_inputs([[(50, 100)], [(100, 90)]])
    logits = model(**inputs).logits
    for off in (None, PruningConfig(method="none")):
        with holov_patches.apply(model, off) as handle:
            assert not handle.active and "forward" not in model.__dict__
            assert torch.equal(model(**inputs).logits, logits)
    keep_all = PruningConfig(method=scratch("t_topk", topk_raster), keep=1000, mode="improved")
    assert_keep_all_and_removed_are_bit_identical(model, inputs, keep_all, PruningConfig(method="cls_topk", keep=8),
                                                  pad=PAD)


@pytest.mark.parametrize("mode", ["faithful", "improved"])
@torch.no_grad()
def test_newlines_and_budget_per_mode(model, scratch, mode):
    sizes = [(50, 100), (100, 90)]
    inputs = make_inputs([sizes])
    ratio = 0.5
    config = PruningConfig(method=scratch("t_topk", topk_raster), ratio=ratio, mode=mode)
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        model(**inputs)
        record = handle.last_prefill
    lines_kept = 0
    for offsets, size in zip(record.offsets, sizes):
        rows, cols = HIRES[size]
        width = cols + 1  # a high-res row: its tokens and its newline
        is_line = (offsets >= PATCHES) & ((offsets - PATCHES) % width == width - 1)
        real = offsets[~is_line]
        k_base, k_hires = PruningConfig(ratio=ratio).split_budget([PATCHES, rows * cols])
        assert (real < PATCHES).sum() == k_base and (real >= PATCHES).sum() == k_hires
        lines_kept += int(is_line.sum())
        if mode == "faithful":
            assert not is_line.any()
            continue
        assert torch.equal(offsets, offsets.sort().values)  # raster order: each newline right after its row
        kept_rows = torch.unique((real[real >= PATCHES] - PATCHES) // width)
        assert torch.equal(torch.unique((offsets[is_line] - PATCHES) // width), kept_rows)
    embeds = seen[0]["inputs_embeds"][0]  # [L', D] what the LLM sees
    is_newline_vector = torch.isclose(embeds, model.model.image_newline, atol=1e-6).all(dim=-1)
    assert int(is_newline_vector.sum()) == lines_kept
    assert (lines_kept == 0) == (mode == "faithful")


@torch.no_grad()
def test_absolute_keep_is_split_between_base_and_high_res(model, scratch):
    sizes = [(50, 100), (30, 112)]
    inputs = make_inputs([[sizes[0]], [sizes[1]]])
    keep = 12
    config = PruningConfig(method=scratch("t_topk", topk_raster), keep=keep)
    with holov_patches.apply(model, config) as handle:
        model(**inputs)
        record = handle.last_prefill
    for image, (size, offsets) in enumerate(zip(sizes, record.offsets)):
        rows, cols = HIRES[size]
        base_call, hires_call = scratch.calls[2 * image], scratch.calls[2 * image + 1]
        assert [base_call["keep"], hires_call["keep"]] == config.split_budget([PATCHES, rows * cols])
        assert base_call["tokens"].shape[1] == PATCHES and hires_call["tokens"].shape[1] == rows * cols
        assert base_call["keep"] + hires_call["keep"] == keep == offsets.numel()
    assert record.num_pruned == sum(RUNS[s] for s in sizes) - 2 * keep


def eager_received(model, views):
    """[V, 16]: attention each patch receives in the last SigLIP layer (vision_feature_layer -1), eager maps."""
    tower = model.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        maps = tower(views, output_attentions=True).attentions[-1]  # [V, H, 16, 16]
    finally:
        tower.set_attn_implementation("sdpa")
    return maps.mean(dim=(1, 2))


@torch.no_grad()
def test_signal_is_received_attention_through_stitching_unpadding_and_interpolation(model, scratch):
    sizes = [(50, 100), (30, 112)]
    inputs = make_inputs([sizes])
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=6)):
        model(**inputs)
    views = torch.cat([inputs["pixel_values"][i, :3] for i in range(2)])  # base + 2 crops per image
    received = eager_received(model, views)  # [6, 16]
    r = torch.arange(4)[:, None]
    c = torch.arange(8)[None, :]
    for image, size in enumerate(sizes):
        base_call, hires_call = scratch.calls[2 * image], scratch.calls[2 * image + 1]
        crop = received[3 * image: 3 * image + 3]
        assert base_call["grid"] == (4, 4) and torch.allclose(base_call["cls_attn"][0], crop[0], atol=1e-6)
        stitched = crop[1 + c // 4, (r % 4) * 4 + c % 4]  # [4, 8]: the two 4 x 4 crops side by side
        assert hires_call["grid"] == HIRES[size]
        if size == (50, 100):  # not unpadded; 4 x 8 > 1.1 base views -> bilinear to (4 // 2**.5, 8 // 2**.5)
            expected = torch.nn.functional.interpolate(stitched[None, None], size=(2, 5), mode="bilinear")[0, 0]
        else:  # (30, 112): unpadding keeps rows 1..2; 2 x 8 is one base view -> not shrunk
            expected = stitched[1:3]
        assert torch.allclose(hires_call["cls_attn"][0], expected.reshape(-1), atol=1e-6)


@torch.no_grad()
def test_base_only_images_of_a_multi_image_sample(model, scratch):
    rows = [[(50, 100), (30, 112)], [(100, 90)]]  # batch_num_images [2, 1]: row 0's images are base views only
    runs = {(50, 100): PATCHES + 1, (30, 112): PATCHES + 1, (100, 90): RUNS[(100, 90)]}
    inputs = make_inputs(rows, runs=runs, batch_num_images=torch.tensor([2, 1]))
    config = PruningConfig(method=scratch("t_topk", topk_raster), keep=5, mode="improved")
    with holov_patches.apply(model, config) as handle:
        model(**inputs)
        record = handle.last_prefill
    assert [(c["tokens"].shape[1], c["keep"], c["grid"]) for c in scratch.calls[:2]] == [(PATCHES, 5, (4, 4))] * 2
    assert [c["tokens"].shape[1] for c in scratch.calls[2:]] == [PATCHES, 16]  # the single image: base + 4 x 4
    for offsets in record.offsets[:2]:  # 5 kept base tokens and the trailing newline
        assert offsets.numel() == 6 and int(offsets[-1]) == PATCHES
    views = torch.cat([inputs["pixel_values"][0, :1], inputs["pixel_values"][1, :1]])
    received = eager_received(model, views)
    assert torch.allclose(scratch.calls[0]["cls_attn"][0], received[0], atol=1e-6)
    assert torch.allclose(scratch.calls[1]["cls_attn"][0], received[1], atol=1e-6)


@torch.no_grad()
def test_positions_are_original_and_pruned_run_equals_masked_full_model(model, scratch):
    inputs = make_inputs([[(50, 100)], [(100, 90)]])
    steps = 3
    config = PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.6, mode="improved", position_ids="original")
    out, record, prefill, plain = pruned_generate_and_forward(model, config, inputs, pad=PAD, steps=steps)
    for (b, start, _), offsets, size in zip(image_runs(inputs["input_ids"], IMAGE), plain.offsets,
                                            [(50, 100), (100, 90)]):
        slots = (plain.source[b] >= start) & (plain.source[b] < start + RUNS[size])  # this image's kept slots
        assert torch.equal(plain.position_ids[b, slots], start + offsets)  # plain forward: positions 0..L-1
    mask = masked_reference(inputs, record, IMAGE)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # generate's positions
    assert_decode_matches_masked_model(model, out, inputs, mask, positions, steps=steps,
                                       image_keys=("pixel_values", "image_sizes"))
    length = inputs["input_ids"].shape[1]
    ref = model(**{**inputs, "attention_mask": mask,
                   "position_ids": torch.arange(length).expand(2, length)}).logits  # the plain forward's positions
    assert_kept_columns_match(prefill, ref, plain.source, inputs["attention_mask"])


@torch.no_grad()
def test_compact_positions_renumber_the_pruned_sequence(model, scratch):
    inputs = make_inputs([[(50, 100)], [(30, 112)]])
    config = PruningConfig(method=scratch("t_topk", topk_raster), keep=8, mode="faithful",
                           position_ids="compact")  # faithful: no newlines
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        assert handle.adapter.positions == "compact"
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD)
    real = inputs["attention_mask"].sum(1) - torch.tensor([RUNS[(50, 100)], RUNS[(30, 112)]]) + 8  # per row T'
    prefill = seen[0]["position_ids"]
    lost = torch.tensor([RUNS[(50, 100)], RUNS[(30, 112)]]) - 8
    assert prefill.shape == (2, inputs["input_ids"].shape[1] - int(lost.min()))  # rows keep their pads, left-padded
    for b in range(2):  # 0..T'-1 over each row's real tokens, its pads at 0
        assert prefill[b, -int(real[b]):].tolist() == list(range(int(real[b])))
        assert not prefill[b, :-int(real[b])].any()
    assert seen[1]["position_ids"][:, 0].tolist() == real.tolist()  # decoding continues at T'
    with holov_patches.apply(model, PruningConfig(method="holov", mode="improved", keep=4)) as handle:
        assert handle.adapter.positions == "original"  # the config's resolved default, as LLaVA-NeXT


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


@torch.no_grad()
def test_video_passes_through_unpruned(model, scratch):
    video_run = 2 * 4 + 1  # 2 frames of 4 x 4 patches pooled 2 x 2 -> 4 tokens each, then one newline
    torch.manual_seed(2)
    ids = torch.tensor([[1, 5] + [IMAGE] * RUNS[(50, 100)] + [7] + [VIDEO] * video_run + [9]])
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(1, 3, 3, 56, 56),
                  image_sizes=torch.tensor([(50, 100)]), pixel_values_videos=torch.randn(1, 2, 3, 56, 56))
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD)
    with holov_patches.apply(model, PruningConfig(method=scratch("t_all", topk_raster), keep=1000, mode="improved")):
        assert torch.equal(model(**inputs).logits, logits)  # keep-all with a video in the prompt: bit-identical
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD), generated)
    scratch.calls.clear()
    for run in (lambda: model(**inputs), lambda: model.generate(**inputs, max_new_tokens=2, pad_token_id=PAD)):
        with lm_inputs(model) as seen, \
                holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=5)) as handle:
            run()
            record = handle.last_prefill
        assert [c["tokens"].shape[1] for c in scratch.calls] == [PATCHES, 10]  # only the image reached the pruner
        assert seen[0]["inputs_embeds"].shape[1] == ids.shape[1] - (RUNS[(50, 100)] - 5)  # the video tokens all stay
        assert (ids[0, record.source[0]] == VIDEO).sum() == video_run
        scratch.calls.clear()


@torch.no_grad()
def test_default_strategy_is_refused(model):
    inputs = make_inputs([[(50, 100)]])
    with holov_patches.apply(model, PruningConfig(method="cls_topk", keep=4)):
        with pytest.raises(ValueError, match="'full' only"):
            model(**inputs, vision_feature_select_strategy="default")
