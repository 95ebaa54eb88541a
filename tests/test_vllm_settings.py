"""The vLLM plugin's decisions that need no vLLM (holov_patches/adapters/vllm_plugin/settings.py):
which setting an engine runs (hf_overrides' ``holov`` > HOLOV_PRUNING > config.json's
``holov`` > off), which methods it refuses and why, K per image, the [CLS] row from a fused
qkv projection, and that the plugin package imports without vLLM. The engine itself is
tested in test_vllm_llava.py (vLLM venv)."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from holov_patches import PruningConfig
from holov_patches.adapters.apply import adapter_methods
from holov_patches.signals import cls_attention_from_hidden
from holov_patches.adapters.vllm_plugin.settings import (FusedQK, check_tower, kept_count, resolve_vllm_pruning,
                                                servable_methods)


def hf_config(holov=None, **changes):
    vision = types.SimpleNamespace(model_type="clip_vision_model", num_hidden_layers=24, image_size=336, patch_size=14)
    cfg = types.SimpleNamespace(vision_config=vision, vision_feature_layer=-2, vision_feature_select_strategy="default")
    if holov is not None:
        cfg.holov = holov
    cfg.__dict__.update(changes)
    return cfg


def test_precedence_overrides_then_environment_then_saved_then_off():
    saved = hf_config({"method": "random", "keep": 32})
    env = {"HOLOV_PRUNING": "method=divprune,keep=96"}
    over = {"holov": "method=holov,keep=128"}
    assert resolve_vllm_pruning(saved, over, env) == PruningConfig(method="holov", keep=128)
    assert resolve_vllm_pruning(saved, {}, env) == PruningConfig(method="divprune", keep=96)
    assert resolve_vllm_pruning(saved, None, {}) == PruningConfig(method="random", keep=32)
    assert resolve_vllm_pruning(hf_config(), {}, {"HOLOV_PRUNING": "  "}) is None  # blank: unset
    assert resolve_vllm_pruning(saved, {"holov": "method=none"}, env) is None  # off at the top level wins
    assert resolve_vllm_pruning(saved, lambda c: c, {}) == PruningConfig(method="random", keep=32)  # callable: saved


def test_servable_methods_are_the_adapters_methods():
    assert servable_methods() == adapter_methods()
    assert "holov" in servable_methods() and "fastv" not in servable_methods()


@pytest.mark.parametrize("setting, match", [
    ("method=fastv,keep=64", "prunes inside the LLM"),
    ("method=dart,keep=64", "prunes inside the LLM"),
    ("method=visionzip,keep=64", "inside the vision tower"),
    ("method=cdpruner,keep=64", "needs"),
    ("method=holov,keep=64,mode=improved", "position_ids='compact'"),
    ("method=holov,keep=64,position_ids=original", "position_ids='compact'"),
])
def test_refused_settings_name_what_to_use(setting, match):
    with pytest.raises(ValueError, match=match) as err:
        resolve_vllm_pruning(hf_config(), {"holov": setting}, {})
    assert "holov" in str(err.value)


def test_improved_holov_with_compact_positions_is_served():
    cfg = resolve_vllm_pruning(hf_config(), {"holov": "method=holov,keep=64,mode=improved,position_ids=compact"}, {})
    assert cfg.mode == "improved" and not cfg.keeps_original_positions


def test_kept_count_and_tower_checks():
    assert kept_count(PruningConfig(keep=64), 576) == 64
    assert kept_count(PruningConfig(ratio=0.778), 576) == 128
    assert kept_count(PruningConfig(keep=1000), 576) == 576
    assert check_tower(hf_config()) == (22, 24)
    with pytest.raises(ValueError, match="CLIP"):
        check_tower(hf_config(vision_config=types.SimpleNamespace(model_type="siglip_vision_model")))
    with pytest.raises(ValueError, match="'default' only"):
        check_tower(hf_config(vision_feature_select_strategy="full"))


class Fused(nn.Module):
    """vLLM's CLIP attention layout: one qkv_proj returning (out, bias)."""

    def __init__(self, reference: nn.Module):
        super().__init__()
        self.num_heads, self.head_dim, self.scale, self.tp_size = reference.num_heads, reference.head_dim, reference.scale, 1
        self.linear = nn.Linear(reference.q_proj.in_features, 3 * reference.q_proj.out_features)
        with torch.no_grad():
            self.linear.weight.copy_(torch.cat([reference.q_proj.weight, reference.k_proj.weight, reference.v_proj.weight]))
            self.linear.bias.copy_(torch.cat([reference.q_proj.bias, reference.k_proj.bias, reference.v_proj.bias]))

    def qkv_proj(self, x):
        return self.linear(x), None


@pytest.mark.parametrize("dtype", ["float32", "model"])
def test_fused_qkv_gives_the_cls_row_of_separate_projections(dtype):
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPAttention

    torch.manual_seed(0)
    ref = CLIPAttention(CLIPVisionConfig(hidden_size=32, num_attention_heads=4)).eval()
    hidden = torch.randn(2, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(cls_attention_from_hidden(FusedQK(Fused(ref)), hidden, dtype),
                                   cls_attention_from_hidden(ref, hidden, dtype))
    fused = Fused(ref)
    fused.tp_size = 2
    with pytest.raises(NotImplementedError, match="tensor-parallel"):
        FusedQK(fused)


def test_plugin_package_imports_without_vllm_and_is_lazy():
    import importlib.util

    import holov_patches.adapters.vllm_plugin as plugin
    from holov_patches.adapters.vllm_plugin import llava

    assert set(plugin.ARCHITECTURES) == {"LlavaForConditionalGeneration", "HoloVLlavaForConditionalGeneration"}
    assert all(v == "holov_patches.adapters.vllm_plugin.llava:HoloVLlavaForConditionalGeneration" for v in plugin.ARCHITECTURES.values())
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError):
            llava.HoloVLlavaForConditionalGeneration  # noqa: B018 -- built on first use, needs vLLM
    with pytest.raises(AttributeError):
        llava.NotAClass  # noqa: B018


def test_setup_declares_the_entry_point():
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert '"vllm.general_plugins": ["holov = holov_patches.adapters.vllm_plugin:register"]' in text
