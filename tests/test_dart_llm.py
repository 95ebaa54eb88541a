"""DART inside our LLaVA's LLM (tiny random model, 5 layers, K=2): the prefill shrinks by the
pruned count, layers >= K see the kept tokens with their original positions, and the logits
equal a manual reference that runs the decoder layers by hand and selects with the plain-loop
reference of the released code (tests/reference_dart_loop.py)."""
from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from holov_patches import PruningConfig
from llava_helpers import assert_batched_generate_matches_single, load_deep_llava, noise_pixels, prompt_ids, right_padded
from reference_dart_loop import reference_dart

LAYERS, K, KEEP = 5, 2, 64
KEPT = 4 + 8 * (KEEP // 8)  # the released budget: 4 image pivots + 8 pivots x 8 tokens = 68


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    tok, model, proc = load_deep_llava(str(tmp_path_factory.mktemp("dart") / "llava-v1.5-dart"), LAYERS, seed=5)
    yield tok, model, noise_pixels(proc, model.config, 2, seed=1)
    model.set_pruning(None)


def _manual_keep(model, embeds: torch.Tensor, start: int) -> tuple:
    """(hidden states entering layer K, positions kept): layers < K on all tokens; layer K-1's
    rotary keys and output through the final norm go to the plain-loop DART reference."""
    lm = model.get_model()
    seq = embeds.shape[1]
    full = torch.arange(seq)[None]
    cos, sin = lm.rotary_emb(embeds, full)
    hidden = embeds
    for layer in lm.layers[:K - 1]:
        hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=full)
    layer = lm.layers[K - 1]
    attn = layer.self_attn
    k = attn.k_proj(layer.input_layernorm(hidden)).view(1, seq, -1, attn.head_dim).transpose(1, 2)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    keys = k.transpose(1, 2).reshape(seq, -1)  # the tiny model has as many KV heads as query heads
    hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=full)
    states = lm.norm(hidden)[0]
    img = slice(start, start + 576)
    txt = slice(start + 576, seq)
    kept = reference_dart(keys[img], states[img], keys[txt], states[txt], KEEP, start=start)
    keep = torch.cat([torch.arange(start), torch.tensor(kept) + start, torch.arange(start + 576, seq)])
    return hidden, keep


def _layers_after_k(model, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    lm = model.get_model()
    hidden, pos = hidden[:, keep], keep[None]
    cos, sin = lm.rotary_emb(hidden, pos)
    for layer in lm.layers[K:]:
        hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)  # causal
    return model.lm_head(lm.norm(hidden))[0, -1]


@torch.no_grad()
@pytest.mark.parametrize("use_cache", [True, False])
def test_prefill_matches_the_manual_reference(deep, use_cache):
    tok, model, px = deep
    ids = prompt_ids(tok)[None]
    start = int((ids[0] == -200).nonzero())
    embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px[:1])[4]
    hidden, keep = _manual_keep(model, embeds, start)
    manual = _layers_after_k(model, hidden, keep)
    model.set_pruning(PruningConfig(method="dart", keep=KEEP))
    try:
        out = model(input_ids=ids, images=px[:1], use_cache=use_cache)
        assert torch.equal(model.fastv_hooks.keep_index[0], keep)
    finally:
        model.set_pruning(None)
    assert keep.numel() == embeds.shape[1] - (576 - KEPT)
    assert out.logits.shape[1] == embeds.shape[1] - (576 - KEPT)
    torch.testing.assert_close(out.logits[0, -1], manual, atol=1e-5, rtol=1e-5)
    if use_cache:
        cache = out.past_key_values if getattr(out, "past_key_values", None) is not None else out.cache
        lengths = [cache.layers[i].keys.shape[2] for i in range(LAYERS)]
        assert lengths == [embeds.shape[1]] * K + [keep.numel()] * (LAYERS - K)


@torch.no_grad()
def test_greedy_decoding_matches_the_manual_reference_step_by_step(deep):
    tok, model, px = deep
    ids = prompt_ids(tok)[None]
    start = int((ids[0] == -200).nonzero())
    model.set_pruning(PruningConfig(method="dart", keep=KEEP))
    try:
        generated = model.generate(ids, images=px[:1], do_sample=False, max_new_tokens=4, min_new_tokens=4,
                                   pad_token_id=tok.pad_token_id)
    finally:
        model.set_pruning(None)
    assert generated.shape == (1, 4)
    prompt = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px[:1])[4]
    _, keep = _manual_keep(model, prompt, start)
    lm = model.get_model()
    for step in range(4):
        embeds = torch.cat([prompt, lm.embed_tokens(generated[:, :step])], dim=1)
        seq = embeds.shape[1]
        full = torch.arange(seq)[None]
        cos, sin = lm.rotary_emb(embeds, full)
        hidden = embeds
        for layer in lm.layers[:K]:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=full)
        logits = _layers_after_k(model, hidden, torch.cat([keep, torch.arange(prompt.shape[1], seq)]))
        assert int(logits.argmax()) == int(generated[0, step]), f"step {step}"


@torch.no_grad()
def test_right_padded_batch_keeps_and_scores_each_row_as_alone(deep):
    tok, model, px = deep
    rows = [prompt_ids(tok, "What?"), prompt_ids(tok, "Describe the picture in great detail please, every object.")]
    model.set_pruning(PruningConfig(method="dart", keep=KEEP))
    try:
        alone = []
        for i, row in enumerate(rows):
            out = model(input_ids=row[None], images=px[i:i + 1])
            alone.append((model.fastv_hooks.keep_index[0].clone(), out.logits[0]))
        ids, mask = right_padded(rows)
        out = model(input_ids=ids, attention_mask=mask, images=px)
        index = model.fastv_hooks.keep_index
    finally:
        model.set_pruning(None)
    for i, (keep, logits) in enumerate(alone):
        assert torch.equal(index[i, :keep.numel()], keep), f"row {i}"
        torch.testing.assert_close(out.logits[i, :keep.numel()], logits, atol=1e-5, rtol=1e-5)


def test_left_padded_generate_matches_each_row_alone(deep):
    tok, model, px = deep
    model.set_pruning(PruningConfig(method="dart", keep=KEEP))
    try:
        assert_batched_generate_matches_single(model, [prompt_ids(tok, "What?"),
                                                       prompt_ids(tok, "Describe the picture in great detail please.")], px)
    finally:
        model.set_pruning(None)


def test_options_are_checked_and_hooks_removed(deep):
    tok, model, px = deep
    with pytest.raises(ValueError, match="dart layer=5"):
        model.set_pruning(PruningConfig(method="dart", keep=KEEP, options={"layer": 5}))
    with pytest.raises(ValueError, match=r"unknown dart options \['pivots'\]"):
        model.set_pruning(PruningConfig(method="dart", keep=KEEP, options={"pivots": 8}))
    with pytest.raises(ValueError, match="budget='all'"):
        model.set_pruning(PruningConfig(method="dart", keep=KEEP, options={"budget": "all"}))
    with pytest.raises(ValueError, match="pivot_text=-2"):
        model.set_pruning(PruningConfig(method="dart", keep=KEEP, options={"pivot_text": -2}))
    model.set_pruning(PruningConfig(method="dart", keep=KEEP, options={"layer": 3, "budget": "exact"}))
    layers = model.get_model().layers
    try:
        with torch.no_grad():
            out = model(input_ids=prompt_ids(tok)[None], images=px[:1])
        assert out.logits.shape[1] == model.fastv_hooks.keep_index.shape[1]
        assert model.fastv_hooks.keep_index.shape[1] == out.logits.shape[1] == _prompt_len(model, tok, px) - (576 - KEEP)
    finally:
        model.set_pruning(None)
    assert not any(len(layer._forward_pre_hooks) for layer in layers)


def _prompt_len(model, tok, px) -> int:
    return model.prepare_inputs_labels_for_multimodal(prompt_ids(tok)[None], None, None, None, None, px[:1])[4].shape[1]
