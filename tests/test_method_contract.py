"""The extended method contract: a method declares its stage and inputs; the one call
passes exactly those; integrations refuse what they cannot compute, naming the alternatives."""
from __future__ import annotations

import pytest
import torch

from holov_patches import PruningConfig, list_pruners, prune_visual_tokens, register_pruner
from holov_patches import registry
from holov_patches.registry import INPUTS, get_entry


def test_every_method_declares_a_known_stage_and_known_inputs():
    for name in list_pruners():
        entry = get_entry(name)
        assert entry.stage in registry.STAGES
        assert set(entry.needs) <= set(INPUTS), name


def test_pre_llm_is_tower_plus_projector_and_excludes_the_llm_stage():
    assert set(list_pruners(stage="pre_llm")) == set(list_pruners(stage="tower")) | set(list_pruners(stage="projector"))
    assert "fastv" in list_pruners(stage="llm") and "fastv" not in list_pruners(stage="pre_llm")
    assert "visionzip" in list_pruners(stage="tower") and "holov" in list_pruners(stage="projector")
    with pytest.raises(ValueError, match="stage='nowhere'"):
        list_pruners(stage="nowhere")


def test_methods_that_ignore_attention_do_not_declare_it():
    assert get_entry("divprune").needs == () and get_entry("random").needs == ()
    assert get_entry("holov").needs == ("cls_attn",) and get_entry("cls_topk").needs == ("cls_attn",)


def test_registration_refuses_unknown_stages_and_inputs():
    with pytest.raises(ValueError, match="stage='before'"):
        register_pruner("x_bad_stage", stage="before")
    with pytest.raises(ValueError, match="unknown inputs \\['depth'\\]"):
        register_pruner("x_bad_need", needs=("depth",))


def test_the_one_call_passes_declared_inputs_and_refuses_the_rest(monkeypatch):
    seen = {}

    def fake(tokens, cls_attn, keep, *, grid=None, keys):
        seen.update(cls_attn=cls_attn, keys=keys)
        return tokens[:, :keep], torch.arange(keep).expand(tokens.shape[0], keep)

    monkeypatch.setitem(registry._REGISTRY, "x_keys", registry.PrunerEntry("x_keys", fake, "tower", "t", ("keys",)))
    tokens, keys = torch.randn(2, 9, 4), torch.randn(2, 9, 3)
    config = PruningConfig(method="x_keys", keep=3)
    kept, _ = prune_visual_tokens(tokens, None, config, keys=keys)
    assert seen["cls_attn"] is None and seen["keys"] is keys and kept.shape == (2, 3, 4)
    with pytest.raises(ValueError, match="needs \\['keys'\\]"):
        prune_visual_tokens(tokens, None, config)
    with pytest.raises(ValueError, match="does not use \\['cls_attn'\\]"):
        prune_visual_tokens(tokens, torch.rand(2, 9), config, keys=keys)
    with pytest.raises(ValueError, match="unknown pruner inputs \\['depth'\\]"):
        prune_visual_tokens(tokens, None, config, keys=keys, depth=keys)


def test_transformers_adapters_refuse_tower_methods_naming_projector_ones():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from adapter_helpers import tiny_clip_and_llama
    from holov_patches import apply

    vision, text = tiny_clip_and_llama(max_position_embeddings=64, pad_token_id=0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=5))
    with pytest.raises(ValueError, match="inside the vision tower.*visionzip_projected"):
        apply(model, PruningConfig(method="visionzip", keep=64))


def test_adapters_run_only_methods_whose_inputs_they_compute():
    from holov_patches.adapters.apply import ADAPTER_INPUTS, adapter_methods

    methods = adapter_methods()
    assert {"holov", "cls_topk", "divprune", "random", "visionzip_projected"} <= set(methods)
    assert "visionzip" not in methods
    for name in methods:
        assert get_entry(name).stage == "projector" and set(get_entry(name).needs) <= set(ADAPTER_INPUTS)
