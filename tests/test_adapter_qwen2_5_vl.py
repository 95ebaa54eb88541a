"""holov_patches.apply on transformers' Qwen2_5_VLForConditionalGeneration (tiny random model, CPU).

What is checked: undoable per-instance patch (bit-identical when off / removed); K = all
tokens is bit-identical (forward and generate); each image is pruned on its own merged
tokens with its own budget and its merged grid; the signal is the attention each patch
RECEIVES in the last vision block, in RASTER order (checked against an explicit eager
attention map over the block input un-permuted by matching rows, so a window-order
mix-up fails); kept tokens keep their 3-D mrope positions (checked against the model's
get_rope_index and against the (t, h, w) formula); the pruned run equals the unpatched
model on the full sequence with the pruned tokens masked out, prefill and decode;
batch 2 with left padding and two images in one prompt for every registered method.
"""
from __future__ import annotations

import pytest
import torch

import holov_patches
from holov_patches.adapters.apply import adapter_methods
from holov_patches import PruningConfig

from adapter_helpers import (assert_decode_matches_masked_model, assert_keep_all_and_removed_are_bit_identical,
                             assert_kept_columns_match, generate_or_skip, image_runs, left_padded_prompts, lm_inputs,
                             masked_reference, pruned_generate_and_forward, scratch_registry, topk_raster)

PAD, START, END, IMAGE, VIDEO = 0, 148, 149, 150, 151
GRIDS = [(1, 8, 12), (1, 6, 4)]  # (t, h, w) patches -> merged 4 x 6 and 3 x 2


def build(depth: int, fullatt):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, window_size=56, out_hidden_size=64,
                           fullatt_block_indexes=fullatt),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return build(depth=2, fullatt=[1])  # block 0 windowed, block 1 full attention, as in the real tower


def make_inputs(rows, seed=1):
    """rows: list of lists of grids (t, h, w); one prompt per row, left-padded."""
    torch.manual_seed(seed)
    ids = left_padded_prompts(rows, lambda grid: [START] + [IMAGE] * (grid[1] * grid[2] // 4) + [END], PAD)
    grid_thw = torch.tensor([grid for images in rows for grid in images])  # [images, 3] (t, h, w)
    return dict(input_ids=ids, attention_mask=(ids != PAD).long(), mm_token_type_ids=(ids == IMAGE).long(),
                image_grid_thw=grid_thw, pixel_values=torch.randn(int(grid_thw.prod(-1).sum()), 3 * 2 * 14 * 14))


@pytest.fixture
def scratch(monkeypatch):
    """Register test pruners for this test only (removed again by monkeypatch)."""
    return scratch_registry(monkeypatch)


@torch.no_grad()
def test_off_removed_and_keep_all_are_bit_identical(model, scratch):
    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    keep_all = PruningConfig(method=scratch("t_topk", topk_raster), keep=1000)
    assert_keep_all_and_removed_are_bit_identical(model, inputs, keep_all, PruningConfig(method="cls_topk", keep=2),
                                                  pad=PAD)


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
def test_signal_is_received_attention_of_last_block_in_raster_order(scratch):
    small = build(depth=1, fullatt=[0])  # one block: its input is the window-permuted patch embedding
    inputs = make_inputs([GRIDS])
    with holov_patches.apply(small, PruningConfig(method=scratch("t_topk", topk_raster), keep=3)):
        small(**inputs)
    signals = [c["cls_attn"][0] for c in scratch.calls]

    visual = small.model.visual
    attn = visual.blocks[0].attn
    seen = {}
    hook = attn.register_forward_pre_hook(lambda _m, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    try:
        visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        hook.remove()
    window_hidden = seen["args"][0]  # [S, C] normed, window order
    cos_w, sin_w = seen["kwargs"]["position_embeddings"]
    raster_hidden = visual.blocks[0].norm1(visual.patch_embed(inputs["pixel_values"]))  # [S, C] raster order
    distance = (window_hidden[:, None] - raster_hidden[None]).abs().amax(dim=-1)  # [S, S] recover the permutation
    perm = distance.argmin(dim=1)  # window position i holds raster token perm[i]
    assert torch.equal(distance.min(dim=1).values, torch.zeros(len(perm)))  # every row matched exactly
    assert not torch.equal(perm, torch.arange(len(perm)))  # the window order really differs here
    cos, sin = torch.empty_like(cos_w), torch.empty_like(sin_w)
    cos[perm], sin[perm] = cos_w, sin_w
    heads = attn.num_heads
    q, k, _ = attn.qkv(raster_hidden).reshape(len(perm), 3, heads, -1).permute(1, 0, 2, 3).unbind(0)

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
        expected = received.view(-1, 4).mean(dim=1)  # one score per 2x2 merge group, raster order
        assert torch.allclose(signal, expected, atol=1e-6)
        start += n
    # scores left in window order (the authors' bug) would be scores[unit_perm]: they differ here
    scores = torch.cat(signals)
    unit_perm = perm.view(-1, 4)[:, 0] // 4  # window unit u holds raster unit unit_perm[u]
    assert not torch.allclose(scores, scores[unit_perm], atol=1e-6)


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


@pytest.mark.parametrize("method", adapter_methods())  # the others are refused (test_method_contract)
@torch.no_grad()
def test_every_method_generates_with_two_images_and_batch_two(model, method):
    inputs = make_inputs([GRIDS, [(1, 4, 4)]])
    with lm_inputs(model) as seen, holov_patches.apply(model, PruningConfig(method=method, ratio=0.5)) as handle:
        out = generate_or_skip(model, method, inputs, pad=PAD)
        record = handle.last_prefill
    lengths = [step["inputs_embeds"].shape[1] for step in seen]  # prefill, then one per decode step
    length = inputs["input_ids"].shape[1]
    lost = length - (record.source >= 0).sum(dim=1)
    assert lost.tolist() == [12 + 3, 2]  # images of 24, 6 and 4 merged tokens keep 12, 3 and 2
    assert lengths[0] == length - 2 and lengths[1:] == [1, 1]  # rows padded to the longest pruned row
    assert out.shape == (2, length + 3) and torch.equal(out[:, :length], inputs["input_ids"])
