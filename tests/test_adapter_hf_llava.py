"""holov_patches.apply on transformers' LlavaForConditionalGeneration (tiny random model, CPU).

What is checked: the patch is per instance and undoable (bit-identical logits and generate
after remove(), and with pruning off); K = all tokens is bit-identical to the unpatched
model; the prefill shrinks by exactly the pruned count for every registered pre-LLM method;
with position_ids="original" kept tokens carry their ORIGINAL position ids and the pruned
model equals the unpatched model run on the full sequence with the pruned image tokens
masked out (prefill AND decode steps, which shows decoding continues from the original
positions); the pruner sees the [CLS] attention of the selected CLIP layer; batch 2 with
left padding and two images per prompt. Compact positions: test_adapter_compact_positions.py.
"""
from __future__ import annotations

import pytest
import torch

import holov_patches
from holov_patches.adapters.apply import adapter_methods
from holov_patches import PruningConfig
from holov_patches.adapters.apply import ADAPTERS

from adapter_helpers import (assert_decode_matches_masked_model, assert_kept_columns_match, generate_or_skip,
                             lm_inputs, masked_reference, pruned_generate_and_forward, scratch_registry,
                             tiny_clip_and_llama, topk_raster)

IMAGE = 100  # image token id
N = 16  # 56 / 14 = 4 x 4 patches per image
PAD = 0


@pytest.fixture(scope="module")
def model():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision, text = tiny_clip_and_llama(max_position_embeddings=256, pad_token_id=PAD)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(cfg).eval()


def batch_inputs():
    """Two prompts, one image each, the first left-padded by 2."""
    torch.manual_seed(1)
    ids = torch.tensor([[PAD, PAD, 1, 5] + [IMAGE] * N + [7, 8, 9],
                        [1, 5, 6, 11] + [IMAGE] * N + [7, 8, 10]])
    mask = (ids != PAD).long()
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 56, 56))


def two_image_inputs():
    torch.manual_seed(2)
    ids = torch.tensor([[1, 5] + [IMAGE] * N + [6, 7] + [IMAGE] * N + [8, 9]])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(2, 3, 56, 56))


def topk_descending(tokens, cls_attn, keep, *, grid=None):
    """Test pruner: top-K in descending-signal order (positions out of order, like faithful HoloV)."""
    index = cls_attn.topk(keep, dim=1).indices
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[2])), index


def topk_with_pad(tokens, cls_attn, keep, *, grid=None):
    """Test pruner: K-1 real tokens then one zero pad (index -1), as faithful HoloV may return."""
    kept, index = topk_raster(tokens, cls_attn, keep - 1)
    pad = torch.full_like(index[:, :1], -1)
    return torch.cat([kept, kept.new_zeros(kept.shape[0], 1, kept.shape[2])], 1), torch.cat([index, pad], 1)


@pytest.fixture
def scratch(monkeypatch):
    """Register test pruners for this test only (removed again by monkeypatch)."""
    return scratch_registry(monkeypatch)


@torch.no_grad()
def test_dispatch_twice_and_remove_restore_the_instance(model):
    assert ADAPTERS["llava"].__module__.endswith("hf_llava")
    handle = holov_patches.apply(model, PruningConfig(method="cls_topk", keep=4))
    assert "forward" in model.__dict__ and "get_image_features" in model.model.__dict__
    with pytest.raises(RuntimeError, match="already applied"):
        holov_patches.apply(model, PruningConfig(method="cls_topk", keep=4))
    handle.remove()
    assert "forward" not in model.__dict__ and "get_image_features" not in model.model.__dict__
    with pytest.raises(RuntimeError, match="already removed"):
        handle.remove()
    model.config.model_type, saved = "opt", model.config.model_type
    try:
        with pytest.raises(ValueError, match="internvl, llava, llava_next, llava_onevision, qwen2_5_vl, qwen2_vl, qwen3_vl"):
            holov_patches.apply(model, PruningConfig(method="cls_topk", keep=4))
    finally:
        model.config.model_type = saved
    with pytest.raises(ValueError, match="inside the LLM"):
        holov_patches.apply(model, PruningConfig(method="fastv", keep=4))
    assert "forward" not in model.__dict__


@torch.no_grad()
def test_off_and_removed_are_bit_identical(model):
    inputs = batch_inputs()
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    with holov_patches.apply(model, None) as handle:  # pruning off: nothing patched
        assert not handle.active and "forward" not in model.__dict__
        assert torch.equal(model(**inputs).logits, logits)
    handle = holov_patches.apply(model, PruningConfig(method="cls_topk", keep=3))
    assert model(**inputs).logits.shape[1] < logits.shape[1]
    handle.remove()
    assert torch.equal(model(**inputs).logits, logits)
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD), generated)


@torch.no_grad()
def test_keep_all_tokens_is_bit_identical(model, scratch):
    for inputs in (batch_inputs(), two_image_inputs()):
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=PAD)
        with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=N)):
            assert torch.equal(model(**inputs).logits, logits)
            assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=PAD), generated)


@pytest.mark.parametrize("method", adapter_methods())  # the others are refused (test_method_contract)
@torch.no_grad()
def test_every_method_shrinks_the_prefill_by_the_pruned_count(model, method):
    inputs = two_image_inputs()
    keep = 5
    with lm_inputs(model) as seen, holov_patches.apply(model, PruningConfig(method=method, keep=keep)):
        out = generate_or_skip(model, method, inputs, pad=PAD)
    length = inputs["input_ids"].shape[1]
    assert seen[0]["inputs_embeds"].shape[1] == length - 2 * (N - keep)
    assert all(step["inputs_embeds"].shape[1] == 1 for step in seen[1:])
    assert out.shape == (1, length + 3) and torch.equal(out[:, :length], inputs["input_ids"])


@torch.no_grad()
def test_kept_tokens_keep_their_original_positions(model, scratch):
    inputs = batch_inputs()
    keep = 5
    config = PruningConfig(method=scratch("t_desc", topk_descending), keep=keep, position_ids="original")
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        model(**inputs)
        record = handle.last_prefill
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    positions, embeds = seen[0]["position_ids"], seen[0]["inputs_embeds"]
    assert torch.equal(positions, record.position_ids)
    for b, start in enumerate((4, 4)):  # image run starts at column 4 in both rows
        offsets = record.offsets[b]
        assert not torch.equal(offsets, offsets.sort().values)  # out of raster order on purpose
        pruned_row = record.source[b]
        slots = (pruned_row >= start) & (pruned_row < start + N)
        # plain forward: the unpatched positions are 0..L-1, so a kept patch keeps start + its index
        assert torch.equal(positions[b, slots], start + offsets)
        assert torch.allclose(embeds[b, slots], features[b][offsets])
        text_after = pruned_row >= start + N
        assert torch.equal(positions[b, text_after], pruned_row[text_after])  # text keeps its position: gaps
    assert record.num_pruned == 2 * (N - keep)


def uneven_inputs():
    """Row 0 has two images, row 1 one image and left padding: the rows lose different counts."""
    torch.manual_seed(3)
    ids = torch.tensor([[1] + [IMAGE] * N + [5] + [IMAGE] * N + [6],
                        [PAD] * N + [1, 7] + [IMAGE] * N + [8]])
    return dict(input_ids=ids, attention_mask=(ids != PAD).long(), pixel_values=torch.randn(3, 3, 56, 56))


@pytest.mark.parametrize("make_inputs", [batch_inputs, uneven_inputs])
@torch.no_grad()
def test_pruned_run_equals_masked_full_model_prefill_and_decode(model, scratch, make_inputs):
    inputs = make_inputs()
    steps = 3
    config = PruningConfig(method=scratch("t_topk", topk_raster), keep=5, position_ids="original")
    out, record, prefill_logits, forward_record = pruned_generate_and_forward(model, config, inputs, pad=PAD,
                                                                              steps=steps)
    # generate's positions: cumsum of the mask (left pads at 0), continued by +1 per new token
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    mask = masked_reference(inputs, record, IMAGE)
    assert_decode_matches_masked_model(model, out, inputs, mask, positions, steps=steps, image_keys=("pixel_values",))
    # plain forward (positions 0..L-1): logits at every kept column equal the masked full model's
    ref = model(**{**inputs, "attention_mask": masked_reference(inputs, forward_record, IMAGE)}).logits
    assert_kept_columns_match(prefill_logits, ref, forward_record.source, inputs["attention_mask"])


@torch.no_grad()
def test_pruner_gets_cls_attention_of_the_selected_layer_and_the_grid(model, scratch):
    inputs = two_image_inputs()
    with holov_patches.apply(model, PruningConfig(method=scratch("t_topk", topk_raster), keep=4)):
        model(**inputs)
    call = scratch.calls[-1]
    assert call["grid"] == (4, 4) and call["keep"] == 4 and tuple(call["cls_attn"].shape) == (2, N)
    tower = model.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        eager = tower(inputs["pixel_values"], output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")
    reference = eager[-2][:, :, 0, 1:].mean(dim=1)  # vision_feature_layer=-2 reads layers[-2]
    assert torch.allclose(call["cls_attn"], reference, atol=1e-6)
    assert not torch.allclose(call["cls_attn"], eager[-1][:, :, 0, 1:].mean(dim=1), atol=1e-6)


@torch.no_grad()
def test_zero_pads_and_labels_stay_consistent(model, scratch):
    inputs = batch_inputs()
    labels = torch.where(inputs["input_ids"] == IMAGE, -100, inputs["input_ids"])
    config = PruningConfig(method=scratch("t_pad", topk_with_pad), keep=4, position_ids="original")
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        out = model(**inputs, labels=labels)
        record = handle.last_prefill
    assert torch.isfinite(out.loss)
    embeds, positions = seen[0]["inputs_embeds"], seen[0]["position_ids"]
    for b in range(2):
        slots = (record.source[b] >= 4) & (record.source[b] < 4 + N)
        assert torch.equal(embeds[b, slots][-1], torch.zeros(64))  # the zero pad reaches the LLM as zeros
        assert positions[b, slots][-1] == 4 + N - 1  # and takes its image's last position
    assert embeds.shape[1] == inputs["input_ids"].shape[1] - (N - 4)


@torch.no_grad()
def test_rows_losing_different_counts_are_left_padded(model, scratch):
    inputs = uneven_inputs()
    ids = inputs["input_ids"]
    config = PruningConfig(method=scratch("t_topk", topk_raster), keep=6)
    with lm_inputs(model) as seen, holov_patches.apply(model, config) as handle:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=PAD)
        record = handle.last_prefill
    # row 0 loses 2 * 10 tokens, row 1 loses 10: both end at 1 + 6 + 1 + 6 + 1 = 15 real tokens after pruning
    assert record.source.shape == (2, ids.shape[1] - 10)
    mask = seen[0]["attention_mask"]
    assert mask[0].sum() == 15 and mask[1].sum() == 9
    assert out.shape == (2, ids.shape[1] + 3)


@torch.no_grad()
def test_generate_without_cache_and_with_beams(model):
    inputs = uneven_inputs()
    # original positions here; tests/test_adapter_compact_positions.py runs the same with compact ones
    with holov_patches.apply(model, PruningConfig(method="cls_topk", keep=3, position_ids="original")) as handle:
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
        # without a cache every step is a fresh pruned prefill of the whole sequence: same tokens
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD,
                                          use_cache=False), cached)
        beams = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD, num_beams=2)
        assert handle.last_prefill.source.shape[0] == 4  # generate expanded the rows (and images) per beam
        assert beams.shape == cached.shape
        with pytest.raises(ValueError, match="chunked prefill"):
            model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD, prefill_chunk_size=8)
