"""FastV inside the LLM: hooks on the instance, SDPA on, positions kept."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from holov_patches import PruningConfig
from llava.mm_utils import process_images
from llava_helpers import assert_batched_generate_matches_single, prompt_ids as _ids


@pytest.fixture()
def setup(tiny_llava):
    tok, model, proc, _ = tiny_llava
    images = [Image.new("RGB", (300, 200), (255, 0, 0)), Image.new("RGB", (200, 300), (0, 0, 255))]
    yield tok, model, process_images(images, proc, model.config)
    model.set_pruning(None)


def test_keep_all_is_identical_and_hooks_are_removed(setup):
    tok, model, px = setup
    ids = _ids(tok)[None]
    off = model.generate(ids, images=px[:1], do_sample=False, max_new_tokens=5, min_new_tokens=5)
    model.set_pruning(PruningConfig(method="fastv", keep=576, options={"layer": 1}))
    assert torch.equal(model.generate(ids, images=px[:1], do_sample=False, max_new_tokens=5, min_new_tokens=5), off)
    layers = model.get_model().layers
    assert any(len(layer._forward_pre_hooks) for layer in layers)
    model.set_pruning(None)
    assert not any(len(layer._forward_pre_hooks) for layer in layers)


def test_prefill_matches_a_manual_reference(setup):
    """Layers >= K run on the kept tokens only; the kept set is the top-K of the eager
    attention row of the last token in layer K-1, and positions keep their values."""
    tok, model, px = setup
    ids = _ids(tok)[None]
    layer_k = 1
    _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px[:1])
    start = int((ids[0] == -200).nonzero())
    lm = model.get_model()
    with torch.no_grad():
        lm.set_attn_implementation("eager")
        try:
            ref = lm(inputs_embeds=embeds, output_attentions=True, output_hidden_states=True)
        finally:
            lm.set_attn_implementation("sdpa")
    row = ref.attentions[layer_k - 1][0, :, -1].float().mean(0)  # [T]
    vis = row[start:start + 576]
    kept = vis.topk(288).indices.sort().values + start
    keep_index = torch.cat([torch.arange(start), kept, torch.arange(start + 576, embeds.shape[1])])
    # run layers >= K by hand on the gathered sequence with the original positions
    hidden = ref.hidden_states[layer_k][:, keep_index]
    pos = keep_index[None]
    cos, sin = lm.rotary_emb(hidden, pos)
    for layer in lm.layers[layer_k:]:
        hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)
    manual = model.lm_head(lm.norm(hidden))[0, -1]

    model.set_pruning(PruningConfig(method="fastv", ratio=0.5, options={"layer": layer_k}))
    with torch.no_grad():
        out = model(input_ids=ids, images=px[:1], use_cache=True)
    assert torch.equal(model.fastv_hooks.keep_index[0], keep_index)
    assert out.logits.shape[1] == embeds.shape[1] - 288
    torch.testing.assert_close(out.logits[0, -1], manual, atol=1e-5, rtol=1e-5)
    cache = out.past_key_values if getattr(out, "past_key_values", None) is not None else out.cache
    lengths = [cache.layers[i].keys.shape[2] for i in range(len(lm.layers))]
    assert lengths == [embeds.shape[1]] * layer_k + [embeds.shape[1] - 288] * (len(lm.layers) - layer_k)


def test_batched_padded_generate_matches_single(setup):
    tok, model, px = setup
    model.set_pruning(PruningConfig(method="fastv", ratio=0.5, options={"layer": 1}))
    assert_batched_generate_matches_single(model, [_ids(tok, "What?"), _ids(tok, "Describe the picture in great detail please.")], px)


def test_training_loss_uses_kept_positions_and_bad_layer_raises(setup):
    tok, model, px = setup
    model.set_pruning(PruningConfig(method="fastv", ratio=0.5, options={"layer": 1}))
    ids = _ids(tok)[None]
    out = model(input_ids=ids, images=px[:1], labels=ids.clamp(min=0))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="fastv layer=9"):
        model.set_pruning(PruningConfig(method="fastv", ratio=0.5, options={"layer": 9}))
