"""FastV on an LLM with several layers after the pruning layer K (as in LLaVA-1.5-7B: 30 of
them at K=2): every layer >= K must see the pruned positions, in the prefill and while
decoding, with the cache on and off. Checked against a manual reference that runs the
decoder layers by hand (eager attention, explicit positions)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from holov_patches import PruningConfig
from llava.mm_utils import process_images
from llava_helpers import load_deep_llava, prompt_ids

LAYERS, K, KEEP = 5, 2, 100


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    tok, model, proc = load_deep_llava(str(tmp_path_factory.mktemp("deep") / "llava-v1.5-deep"), LAYERS, seed=3)
    image = Image.new("RGB", (300, 200), (200, 40, 40))
    image.paste((30, 30, 220), (40, 40, 160, 150))
    return tok, model, process_images([image], proc, model.config)


def _manual_logits(model, embeds: torch.Tensor, start: int) -> tuple:
    """Layers < K on all tokens; the K-1 layer's last-token attention row (heads averaged)
    picks KEEP image tokens; layers >= K on the kept tokens with their original positions."""
    lm = model.get_model()
    lm.set_attn_implementation("eager")
    try:
        full = torch.arange(embeds.shape[1])[None]
        cos, sin = lm.rotary_emb(embeds, full)
        hidden = embeds
        causal = torch.full((embeds.shape[1], embeds.shape[1]), float("-inf")).triu(1)[None, None]
        for layer in lm.layers[:K - 1]:
            hidden = layer(hidden, attention_mask=causal, position_embeddings=(cos, sin), position_ids=full)
        layer = lm.layers[K - 1]
        normed = layer.input_layernorm(hidden)
        _, weights = layer.self_attn(normed, attention_mask=causal, position_embeddings=(cos, sin))
        hidden = layer(hidden, attention_mask=causal, position_embeddings=(cos, sin), position_ids=full)
    finally:
        lm.set_attn_implementation("sdpa")
    row = weights[0, :, -1].float().mean(0)  # [T]
    kept = row[start:start + 576].topk(KEEP).indices.sort().values + start
    keep = torch.cat([torch.arange(start), kept, torch.arange(start + 576, embeds.shape[1])])
    hidden, pos = hidden[:, keep], keep[None]
    cos, sin = lm.rotary_emb(hidden, pos)
    mask = torch.full((keep.numel(), keep.numel()), float("-inf")).triu(1)[None, None]
    for layer in lm.layers[K:]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
    return model.lm_head(lm.norm(hidden))[0, -1], keep


@torch.no_grad()
@pytest.mark.parametrize("use_cache", [True, False])
def test_prefill_with_many_layers_after_k_matches_the_manual_reference(deep, use_cache):
    tok, model, px = deep
    ids = prompt_ids(tok)[None]
    start = int((ids[0] == -200).nonzero())
    embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px)[4]
    manual, keep = _manual_logits(model, embeds, start)
    model.set_pruning(PruningConfig(method="fastv", keep=KEEP, options={"layer": K}))
    try:
        out = model(input_ids=ids, images=px, use_cache=use_cache)
        assert torch.equal(model.fastv_hooks.keep_index[0], keep)
    finally:
        model.set_pruning(None)
    assert out.logits.shape[1] == embeds.shape[1] - (576 - KEEP)
    torch.testing.assert_close(out.logits[0, -1], manual, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_decoding_with_the_cache_matches_the_manual_reference_step_by_step(deep):
    """Each greedy token equals the argmax of the manual reference on the prompt plus the
    tokens generated before it (the reference re-ranks nothing: the prompt's kept set holds)."""
    tok, model, px = deep
    ids = prompt_ids(tok)[None]
    start = int((ids[0] == -200).nonzero())
    model.set_pruning(PruningConfig(method="fastv", keep=KEEP, options={"layer": K}))
    try:
        generated = model.generate(ids, images=px, do_sample=False, max_new_tokens=4, min_new_tokens=4,
                                   pad_token_id=tok.pad_token_id)
    finally:
        model.set_pruning(None)
    prompt_embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px)[4]
    _, keep = _manual_logits(model, prompt_embeds, start)
    lm = model.get_model()
    for step in range(generated.shape[1]):
        new = lm.embed_tokens(generated[:, :step])
        embeds = torch.cat([prompt_embeds, new], dim=1)
        # the kept set is the prompt's; the generated tokens are always kept
        extra = torch.arange(prompt_embeds.shape[1], embeds.shape[1])
        logits = _reference_with_keep(model, embeds, torch.cat([keep, extra]))
        assert int(logits.argmax()) == int(generated[0, step]), f"step {step}"


def _reference_with_keep(model, embeds, keep):
    lm = model.get_model()
    lm.set_attn_implementation("eager")
    try:
        full = torch.arange(embeds.shape[1])[None]
        cos, sin = lm.rotary_emb(embeds, full)
        causal = torch.full((embeds.shape[1], embeds.shape[1]), float("-inf")).triu(1)[None, None]
        hidden = embeds
        for layer in lm.layers[:K]:
            hidden = layer(hidden, attention_mask=causal, position_embeddings=(cos, sin), position_ids=full)
        hidden, pos = hidden[:, keep], keep[None]
        cos, sin = lm.rotary_emb(hidden, pos)
        mask = torch.full((keep.numel(), keep.numel()), float("-inf")).triu(1)[None, None]
        for layer in lm.layers[K:]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
    finally:
        lm.set_attn_implementation("sdpa")
    return model.lm_head(lm.norm(hidden))[0, -1]
