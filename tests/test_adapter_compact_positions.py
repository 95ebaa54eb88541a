"""``position_ids="compact"`` in the transformers adapters (tiny random models, CPU).

What is checked: with compact positions the adapted llava-hf model equals the UNPATCHED
model fed the pruned sequence directly (the kept image vectors spliced, in the pruner's
order, into a shorter left-padded sequence built here from the prompt, with the unpatched
model's default positions): plain-forward logits, and greedy generate with its per-step
logits (so decoding continues from the pruned length), for a batch of 2 with left padding
and for rows that lose different counts; the positions ``generate`` gives the pruned prompt
are 0..T'-1 per row (hand-counted); cache / no-cache / beams agree; LLaVA-NeXT renumbers
the same way; the adapters resolve the config's default (compact except improved HoloV);
Qwen2.5-VL refuses compact (M-RoPE has no numbering for an image that lost its grid) and
keeps original positions by default.
"""
from __future__ import annotations

import pytest
import torch

import holov_patches
from holov_patches import PruningConfig

from adapter_helpers import left_padded_prompts, lm_inputs, scratch_registry, tiny_clip_and_llama

IMAGE = 100
N = 16  # 4 x 4 patches per 56 px image
PAD = 0
KEEP = [9, 2, 14, 5, 0]  # the test pruner's fixed choice, out of raster order on purpose


def first_k(tokens, cls_attn, keep, *, grid=None):
    """Test pruner: keeps tokens 0..K-1 in raster order (K = N keeps all)."""
    index = torch.arange(keep).expand(tokens.shape[0], -1)
    return tokens[:, :keep], index


def fixed_choice(tokens, cls_attn, keep, *, grid=None):
    """Test pruner: keeps the first `keep` of KEEP, in that order, whatever the signal."""
    index = torch.tensor(KEEP[:keep]).expand(tokens.shape[0], -1)
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[2])), index


@pytest.fixture(scope="module")
def model():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision, text = tiny_clip_and_llama(max_position_embeddings=256, pad_token_id=PAD)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(cfg).eval()


@pytest.fixture
def compact(monkeypatch):
    register = scratch_registry(monkeypatch)
    return PruningConfig(method=register("t_fixed", fixed_choice), keep=len(KEEP), position_ids="compact")


def make_inputs(rows, extra=(0, 2), seed=1):
    """rows: images per prompt; row r is [1, 5 + r, 11 * extra[r], (N image tokens, 7)..., 9], left-padded."""
    torch.manual_seed(seed)
    ids = left_padded_prompts([[None] * n for n in rows], lambda _: [IMAGE] * N, PAD)
    seqs = [[t for t in row.tolist() if t != PAD] for row in ids]
    seqs = [s[:2] + [11] * e + s[2:] for s, e in zip(seqs, extra)]
    length = max(len(s) for s in seqs)
    ids = torch.tensor([[PAD] * (length - len(s)) + s for s in seqs])
    return dict(input_ids=ids, attention_mask=(ids != PAD).long(), pixel_values=torch.randn(sum(rows), 3, 56, 56))


def pruned_sequence(model, inputs):
    """(inputs_embeds [B, L', D], attention_mask [B, L']) built directly: each row of the padded
    batch with every image run replaced by the KEEP vectors of that image (its pads stay),
    then the rows left-padded with PAD embeddings to a common length."""
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output  # per image [N, D]
    embed = model.get_input_embeddings()
    seqs, masks, image = [], [], 0
    for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
        pieces, flags, j = [], [], 0
        while j < len(ids):
            if ids[j] == IMAGE:
                pieces.append(features[image][KEEP])
                flags += [1] * len(KEEP)
                image, j = image + 1, j + N
            else:
                pieces.append(embed(ids[j:j + 1]))
                flags.append(int(mask[j]))
                j += 1
        seqs.append(torch.cat(pieces))
        masks.append(flags)
    length = max(len(s) for s in seqs)
    pad = embed(torch.tensor([PAD]))
    embeds = torch.stack([torch.cat([pad.expand(length - len(s), -1), s]) for s in seqs])
    mask = torch.tensor([[0] * (length - len(m)) + m for m in masks])
    return embeds, mask


@pytest.mark.parametrize("rows", [[1, 1], [2, 1]], ids=["left-padded", "rows-lose-different-counts"])
@torch.no_grad()
def test_compact_equals_unpatched_model_on_the_pruned_sequence(model, compact, rows):
    inputs = make_inputs(rows)
    embeds, mask = pruned_sequence(model, inputs)
    reference = model(inputs_embeds=embeds, attention_mask=mask).logits  # default positions 0..L'-1
    steps = 4
    expected = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                              pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    with holov_patches.apply(model, compact) as handle:
        assert handle.adapter.positions == "compact"
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, pad_token_id=PAD, output_logits=True,
                             return_dict_in_generate=True)
    assert logits.shape == reference.shape
    real = mask.bool()
    assert torch.allclose(logits[real], reference[real], atol=1e-5)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, length:], expected.sequences)
    for step in range(steps):
        assert torch.allclose(out.logits[step], expected.logits[step], atol=1e-5), step


@torch.no_grad()
def test_generate_numbers_the_pruned_prompt_from_zero_and_decodes_from_its_length(model, compact):
    inputs = make_inputs([1, 1])  # row 0: 2 left pads + 1, 5, 16 image, 7, 9 = 20 real; row 1: 1, 6, 11, 11, ... = 22
    with lm_inputs(model) as seen, holov_patches.apply(model, compact) as handle:
        model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=PAD)
        record = handle.last_prefill
    lost = N - len(KEEP)  # 11 per image
    prefill = seen[0]["position_ids"]
    assert prefill.shape == (2, 22 - lost)
    assert prefill[0, 2:].tolist() == list(range(20 - lost)) and prefill[1].tolist() == list(range(22 - lost))
    assert torch.equal(prefill, record.position_ids)
    # decoding continues at T' (not at the unpruned T = 20 / 22)
    assert [step["position_ids"][:, 0].tolist() for step in seen[1:]] == [[9, 11], [10, 12]]


@torch.no_grad()
def test_cache_no_cache_and_beams_agree_with_compact_positions(model):
    inputs = make_inputs([2, 1], seed=3)
    with holov_patches.apply(model, PruningConfig(method="cls_topk", keep=3)) as handle:  # default -> compact
        assert handle.adapter.positions == "compact"
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD,
                                          use_cache=False), cached)
        beams = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD, num_beams=2)
        assert beams.shape == cached.shape


@torch.no_grad()
def test_keep_all_with_compact_positions_is_bit_identical(model, monkeypatch):
    register = scratch_registry(monkeypatch)
    inputs = make_inputs([2, 1], seed=4)
    config = PruningConfig(method=register("t_first", first_k), keep=N, position_ids="compact")
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    with holov_patches.apply(model, config):
        assert torch.equal(model(**inputs).logits, logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=PAD), generated)


@pytest.mark.parametrize("settings, expected", [
    (dict(method="holov", mode="improved"), "original"),
    (dict(method="holov", mode="faithful"), "compact"),
    (dict(method="cls_topk"), "compact"),
    (dict(method="holov", mode="improved", position_ids="compact"), "compact"),
    (dict(method="cls_topk", position_ids="original"), "original"),
])
def test_adapters_follow_the_configs_resolved_default(model, settings, expected):
    with holov_patches.apply(model, PruningConfig(keep=4, **settings)) as handle:
        assert handle.adapter.positions == expected


@torch.no_grad()
def test_llava_next_renumbers_the_pruned_sequence(monkeypatch):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    vision, text = tiny_clip_and_llama(max_position_embeddings=512, pad_token_id=PAD)
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", image_grid_pinpoints=[[56, 112], [112, 56]])
    model = LlavaNextForConditionalGeneration(cfg).eval()
    run = 16 + 4 * 9  # (50, 100): base 4 x 4, then a 4 x 8 high-res map with a newline per row
    ids = torch.tensor([[PAD, PAD, 1, 5] + [IMAGE] * run + [7, 9], [1, 5, 6, 8] + [IMAGE] * run + [7, 9]])
    torch.manual_seed(1)
    inputs = dict(input_ids=ids, attention_mask=(ids != PAD).long(), pixel_values=torch.randn(2, 3, 3, 56, 56),
                  image_sizes=torch.tensor([[50, 100], [50, 100]]))
    register = scratch_registry(monkeypatch)
    # faithful mode: newlines dropped, 12 tokens per image (4 of the base view, 8 of the high-res map)
    config = PruningConfig(method=register("t_first", first_k), keep=12, position_ids="compact")
    with lm_inputs(model) as seen, holov_patches.apply(model, config):
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=PAD)
    prefill = seen[0]["position_ids"]
    assert prefill.shape == (2, 4 + 12 + 2)
    assert prefill[0, 2:].tolist() == list(range(16)) and prefill[1].tolist() == list(range(18))
    assert seen[1]["position_ids"][:, 0].tolist() == [16, 18]


def test_qwen2_5_vl_refuses_compact_and_keeps_original_by_default():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=160, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=128, pad_token_id=PAD,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, window_size=56, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        image_token_id=150, video_token_id=151, vision_start_token_id=148, vision_end_token_id=149)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with pytest.raises(ValueError, match=r"position_ids='compact' is not supported for qwen2_5_vl.*'original'"):
        holov_patches.apply(model, PruningConfig(method="cls_topk", keep=4, position_ids="compact"))
    assert "forward" not in model.__dict__  # refused before anything was patched
    with holov_patches.apply(model, PruningConfig(method="cls_topk", keep=4)) as handle:  # the config's default is compact
        assert handle.adapter.positions == "original"
