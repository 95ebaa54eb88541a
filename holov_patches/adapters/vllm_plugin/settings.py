"""What the vLLM integration decides without importing vLLM (so it is importable, and
tested, anywhere): which pruning setting an engine runs, whether vLLM can serve it, how
many tokens an image keeps, the [CLS] row from vLLM's fused ``qkv_proj``, and the
optional dump of every pruning call that the tests compare against transformers.

The setting is the one ``PruningConfig`` every other entry point resolves, with the same
precedence (:func:`holov_patches.config.resolve_pruning_config`):

1. ``hf_overrides={"holov": ...}`` given to the engine (``LLM(...)`` or
   ``vllm serve --hf-overrides``): the explicit argument;
2. the ``HOLOV_PRUNING`` environment variable;
3. the checkpoint's saved ``holov`` block in config.json;
4. off: vLLM's own LLaVA, unchanged.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Tuple

import torch

from holov_patches.api import prune_visual_tokens
from holov_patches.config import PruningConfig, resolve_pruning_config
from holov_patches.registry import get_entry, list_pruners

SERVABLE_INPUTS = ("cls_attn",)  # what the vLLM model computes for a method
DUMP_ENV = "HOLOV_VLLM_DUMP"  # a folder: every pruning call is saved there (tests, debugging)


def servable_methods() -> list:
    """Methods the vLLM model runs: after the projector, needing at most the [CLS] row."""
    return [n for n in list_pruners(stage="projector") if set(get_entry(n).needs) <= set(SERVABLE_INPUTS)]


def check_servable(config: PruningConfig) -> PruningConfig:
    """Raise ValueError, naming what to use instead, for a setting vLLM cannot run."""
    entry = get_entry(config.method)
    use = f"use one of: {', '.join(servable_methods())}"
    if entry.stage == "llm":
        raise ValueError(f"HoloV vLLM plugin: method {config.method!r} prunes inside the LLM (stage='llm'), which "
                         f"vLLM's paged attention does not support; {use}")
    if entry.stage == "tower":
        raise ValueError(f"HoloV vLLM plugin: method {config.method!r} prunes inside the vision tower (before the "
                         f"projector), which the plugin does not support; {use} (e.g. 'visionzip_projected')")
    missing = [n for n in entry.needs if n not in SERVABLE_INPUTS]
    if missing:
        raise ValueError(f"HoloV vLLM plugin: method {config.method!r} needs {missing}, which the plugin does not "
                         f"compute (it computes {list(SERVABLE_INPUTS)}); {use}")
    if config.keeps_original_positions:
        raise ValueError(f"HoloV vLLM plugin: {config.describe()} keeps the original position ids, but vLLM numbers "
                         "the pruned prompt 0..T'-1; set position_ids='compact' (the only numbering vLLM has)")
    return config


def _explicit(hf_overrides: Any) -> Any:
    if isinstance(hf_overrides, Mapping):
        return hf_overrides.get("holov")
    return None  # a callable override edits the config itself: its result is the saved block


def resolve_vllm_pruning(hf_config: Any, hf_overrides: Any = None,
                         environ: Optional[Mapping[str, str]] = None) -> Optional[PruningConfig]:
    """The engine's setting (None = off): hf_overrides' ``holov`` > HOLOV_PRUNING > config.json's ``holov``."""
    cfg = resolve_pruning_config(explicit=_explicit(hf_overrides), saved=getattr(hf_config, "holov", None),
                                 environ=environ)
    return None if cfg is None else check_servable(cfg)


def kept_count(config: PruningConfig, num_tokens: int) -> int:
    """Tokens an image of ``num_tokens`` keeps: what the processor reserves and the model returns."""
    return min(config.resolve_keep(num_tokens), num_tokens)


def check_tower(hf_config: Any) -> Tuple[int, int]:
    """(selected layer index, grid side) of a LLaVA config the plugin prunes; raises otherwise."""
    from holov_patches.adapters.hf_llava import selected_layer  # the HF adapter's torch-only helper

    vision = hf_config.vision_config
    if getattr(vision, "model_type", None) != "clip_vision_model":
        raise ValueError(f"HoloV vLLM plugin: the vision tower is {getattr(vision, 'model_type', None)!r}; pruning "
                         "needs a CLIP tower ([CLS] attention)")
    if hf_config.vision_feature_select_strategy != "default":
        raise ValueError(f"vision_feature_select_strategy={hf_config.vision_feature_select_strategy!r}: pruning "
                         "supports 'default' only (with 'full' the [CLS] token is a feature)")
    layer = selected_layer(hf_config.vision_feature_layer, vision.num_hidden_layers)
    return layer, vision.image_size // vision.patch_size


class FusedQK:
    """The q_proj / k_proj view of a vLLM CLIP attention (one fused ``qkv_proj``) that
    :func:`holov_patches.signals.cls_attention_from_hidden` reads."""

    def __init__(self, attn: torch.nn.Module):
        if getattr(attn, "tp_size", 1) != 1:
            raise NotImplementedError("HoloV vLLM plugin: the [CLS] row needs all heads of the tower's attention; "
                                      "tensor-parallel vision towers (tp_size > 1) are not supported")
        self.attn = attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale

    def _split(self, hidden: torch.Tensor):
        qkv, _ = self.attn.qkv_proj(hidden)
        return qkv.chunk(3, dim=-1)

    def q_proj(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._split(hidden)[0]

    def k_proj(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._split(hidden)[1]


def prune_projected(features: torch.Tensor, cls_attn: torch.Tensor, config: PruningConfig, grid: Tuple[int, int],
                    pixel_values: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """features [I, N, D] (projected), cls_attn [I, N] -> (kept [I, K, D], index [I, K]) through the
    one registry call, passing only what the method declares (as the transformers adapters do)."""
    attn = cls_attn.float() if "cls_attn" in get_entry(config.method).needs else None
    kept, index = prune_visual_tokens(features, attn, config, grid=grid)
    expected = kept_count(config, features.shape[1])
    if kept.shape[1] != expected:
        raise RuntimeError(f"{config.describe()} kept {kept.shape[1]} of {features.shape[1]} tokens, but the "
                           f"processor reserved {expected} placeholders per image")
    dump(config, pixel_values, features, cls_attn, index)
    return kept, index.to(torch.long)


_calls = [0]


def dump(config: PruningConfig, pixel_values, features, cls_attn, index) -> None:
    folder = os.environ.get(DUMP_ENV, "").strip()
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    _calls[0] += 1
    record = {"config": config.to_dict(), "index": index.cpu(), "cls_attn": cls_attn.float().cpu(),
              "features": features.float().cpu(),
              "pixel_values": None if pixel_values is None else pixel_values.float().cpu()}
    path = os.path.join(folder, f"prune-{os.getpid()}-{_calls[0]:05d}.pt")
    torch.save(record, path + ".tmp")
    os.replace(path + ".tmp", path)
