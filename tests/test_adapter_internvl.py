"""holov_patches.apply on transformers' InternVLForConditionalGeneration (tiny random model, CPU).

What is checked: undoable per-instance patch (bit-identical when off / removed); K = all
tokens is bit-identical (forward, generate and beams); the tiles of an image are found from
its run of image tokens and its K is split over them (thumbnail included) by
PruningConfig.split_budget, each tile pruned on its merged grid; the signal is the [CLS]
attention of the selected InternViT layer (q/k norms on), checked against eager attention
maps, and mapped through the pixel shuffle as the mean over each merged token's 2 x 2
patches; original and compact positions; the pruned run equals the masked full model
(prefill and decode); batch 2 with two images in one prompt for every adapter method;
beams; strategy 'full' is refused.
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

IMAGE, START, END, PAD = 100, 98, 99, 0
PER_TILE = 16  # 56 px / 7 px patches = 8 x 8, pixel-shuffled 2 x 2 -> 4 x 4 tokens per tile


def build():
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(0)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=[56, 56], patch_size=[7, 7], use_qk_norm=True),
        text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=512,
                         pad_token_id=PAD),
        image_token_id=IMAGE, image_seq_length=PER_TILE)  # vision_feature_layer -1, strategy 'default'
    return InternVLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return build()


def make_inputs(rows, seed=1):
    """rows: list of lists of tile counts (an image of t > 1 tiles: t - 1 tiles and its thumbnail)."""
    torch.manual_seed(seed)
    ids = left_padded_prompts(rows, lambda tiles: [START] + [IMAGE] * (PER_TILE * tiles) + [END], PAD)
    tiles = sum(t for images in rows for t in images)
    return dict(input_ids=ids, attention_mask=(ids != PAD).long(), pixel_values=torch.randn(tiles, 3, 56, 56))


@pytest.fixture
def scratch(monkeypatch):
    """Register test pruners for this test only (removed again by monkeypatch)."""
    return scratch_registry(monkeypatch)


def test_registered_for_internvl():
    assert ADAPTERS["internvl"].__module__.endswith("internvl") and ADAPTERS["internvl"].family == "internvl"


@torch.no_grad()
def test_off_removed_and_keep_all_are_bit_identical(model, scratch):
    inputs = make_inputs([[3, 1], [2]])
    logits = model(**inputs).logits
    for off in (None, PruningConfig(method="none")):
        with holov_patches.apply(model, off) as handle:
            assert not handle.active and "forward" not in model.__dict__
            assert torch.equal(model(**inputs).logits, logits)
    keep_all = PruningConfig(method=scratch("t_topk", topk_raster), keep=1000)
    assert_keep_all_and_removed_are_bit_identical(model, inputs, keep_all, PruningConfig(method="cls_topk", keep=5),
                                                  pad=PAD)
    beams = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=PAD, num_beams=2)
    with holov_patches.apply(model, keep_all):  # generate's beam expansion rebuilds the tile tensor
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=PAD, num_beams=2),
                           beams)


@torch.no_grad()
def test_each_images_budget_is_split_over_its_tiles(model, scratch):
    inputs = make_inputs([[3, 1]])
    keep = 5
    config = PruningConfig(method=scratch("t_topk", topk_raster), keep=keep)
    with holov_patches.apply(model, config) as handle:
        model(**inputs)
        record = handle.last_prefill
    calls = [(c["tokens"].shape[1], c["keep"], c["grid"]) for c in scratch.calls]
    split = config.split_budget([PER_TILE] * 3)
    assert split == [2, 2, 1]
    assert calls == [(PER_TILE, k, (4, 4)) for k in split] + [(PER_TILE, keep, (4, 4))]
    assert [o.numel() for o in record.offsets] == [keep, keep] and record.num_pruned == 4 * PER_TILE - 2 * keep
    assert record.num_tokens == [3 * PER_TILE, PER_TILE]
    tile_of = record.offsets[0] // PER_TILE
    assert tile_of.tolist() == [0, 0, 1, 1, 2]  # each tile's kept offsets inside the image's run
    scratch.calls.clear()
    ratio = PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.5)
    with holov_patches.apply(model, ratio) as handle:
        model(**inputs)
    assert [c["keep"] for c in scratch.calls] == ratio.split_budget([PER_TILE] * 3) + [8]


@torch.no_grad()
def test_signal_is_cls_attention_mapped_through_the_pixel_shuffle(model, scratch):
    inputs = make_inputs([[3, 1]])
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=4)):
        model(**inputs)
    tower = model.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        maps = tower(pixel_values=inputs["pixel_values"], output_attentions=True).attentions[-1]  # [4, H, 65, 65]
    finally:
        tower.set_attn_implementation("sdpa")
    cls = maps[:, :, 0, 1:].mean(dim=1).view(4, 8, 8)  # [tiles, 8, 8] [CLS] row, heads averaged
    expected = torch.nn.functional.avg_pool2d(cls[:, None], 2)[:, 0].reshape(4, PER_TILE)  # mean of each 2 x 2 block
    got = torch.cat([c["cls_attn"] for c in scratch.calls])  # one call per tile, in tile order
    assert torch.allclose(got, expected, atol=1e-6)
    # the model's pixel shuffle puts patches (2i + di, 2j + dj) into merged token (i, j): the same blocks as the scores
    index = model.model.pixel_shuffle(torch.arange(64.0).view(1, 8, 8, 1), scale_factor=0.5)  # [1, 4, 4, 4]
    i, j = torch.arange(4)[:, None], torch.arange(4)[None, :]
    for di in (0, 1):
        for dj in (0, 1):
            assert torch.equal(index[0, :, :, 2 * di + dj], ((2 * i + di) * 8 + 2 * j + dj).float())


@torch.no_grad()
def test_positions_are_original_and_pruned_run_equals_masked_full_model(model, scratch):
    inputs = make_inputs([[3], [1, 2]])
    steps = 3
    config = PruningConfig(method=scratch("t_topk", topk_raster), ratio=0.6, position_ids="original")
    out, record, prefill, plain = pruned_generate_and_forward(model, config, inputs, pad=PAD, steps=steps)
    for (b, start, run), offsets in zip(image_runs(inputs["input_ids"], IMAGE), plain.offsets):
        slots = (plain.source[b] >= start) & (plain.source[b] < start + run)  # this image's kept slots
        assert torch.equal(plain.position_ids[b, slots], start + offsets)  # plain forward: positions 0..L-1
    mask = masked_reference(inputs, record, IMAGE)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # generate's positions
    assert_decode_matches_masked_model(model, out, inputs, mask, positions, steps=steps, image_keys=("pixel_values",))
    length = inputs["input_ids"].shape[1]
    ref = model(**{**inputs, "attention_mask": mask, "position_ids": torch.arange(length).expand(2, length)}).logits
    assert_kept_columns_match(prefill, ref, plain.source, inputs["attention_mask"])


@torch.no_grad()
def test_compact_positions_renumber_the_pruned_sequence(model, scratch):
    inputs = make_inputs([[3], [1]])
    config = PruningConfig(method=scratch("t_topk", topk_raster), keep=4, position_ids="compact")
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        assert handle.adapter.positions == "compact"
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD)
    real = inputs["attention_mask"].sum(1) - torch.tensor([3 * PER_TILE, PER_TILE]) + 4  # per row T'
    lost = torch.tensor([3 * PER_TILE, PER_TILE]) - 4
    prefill = seen[0]["position_ids"]
    assert prefill.shape == (2, inputs["input_ids"].shape[1] - int(lost.min()))
    for b in range(2):  # 0..T'-1 over each row's real tokens, its pads at 0
        assert prefill[b, -int(real[b]):].tolist() == list(range(int(real[b])))
        assert not prefill[b, :-int(real[b])].any()
    assert seen[1]["position_ids"][:, 0].tolist() == real.tolist()  # decoding continues at T'
    with holov_patches.apply(model, PruningConfig(method="holov", mode="improved", keep=4)) as handle:
        assert handle.adapter.positions == "original"  # the config's resolved default


@pytest.mark.parametrize("mode", ["faithful", "improved"])
@pytest.mark.parametrize("method", adapter_methods())  # the others are refused (test_method_contract)
@torch.no_grad()
def test_every_method_generates_with_two_images_and_batch_two(model, method, mode):
    inputs = make_inputs([[3, 1], [2]])
    config = PruningConfig(method=method, ratio=0.75, mode=mode)
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        out = generate_or_skip(model, method, inputs, pad=PAD)
        record = handle.last_prefill
    lengths = [step["inputs_embeds"].shape[1] for step in seen]  # prefill, then one per decode step
    length = inputs["input_ids"].shape[1]
    lost = length - (record.source >= 0).sum(dim=1)  # per row
    assert lost.tolist() == [3 * PER_TILE - 12 + PER_TILE - 4, 2 * PER_TILE - 8]  # K = 25% of each image
    assert lengths[0] == length - int(lost.min()) and lengths[1:] == [1, 1]
    assert int(lost.sum()) == record.num_pruned
    assert out.shape == (2, length + 3) and torch.equal(out[:, :length], inputs["input_ids"])


@torch.no_grad()
def test_full_strategy_and_mismatched_runs_are_refused(model):
    inputs = make_inputs([[2]])
    with holov_patches.apply(model, PruningConfig(method="cls_topk", keep=4)):
        with pytest.raises(ValueError, match="'default' only"):
            model(**inputs, vision_feature_select_strategy="full")
        bad = dict(inputs, input_ids=inputs["input_ids"].masked_fill(inputs["input_ids"] == START, IMAGE))
        with pytest.raises(ValueError, match="whole numbers"):
            model(**bad)
