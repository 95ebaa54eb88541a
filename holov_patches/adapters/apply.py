"""``holov_patches.apply(model, config) -> handle``: the one entry point that turns visual
token pruning on for a transformers model instance (peft's ``get_peft_model`` pattern:
the instance is wrapped, the class is never touched, and ``handle.remove()`` undoes it).

Dispatch is on ``model.config.model_type`` through one table; an unsupported type raises
and lists the supported ones.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Type

from torch import nn

from holov_patches.adapters.base import SequencePruningAdapter
from holov_patches.adapters.hf_llava import HFLlavaAdapter
from holov_patches.adapters.hf_llava_next import HFLlavaNextAdapter
from holov_patches.adapters.internvl import InternVLAdapter
from holov_patches.adapters.llava_onevision import LlavaOnevisionAdapter
from holov_patches.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from holov_patches.adapters.qwen2_vl import Qwen2VLAdapter
from holov_patches.adapters.qwen3_vl import Qwen3VLAdapter
from holov_patches.config import PruningConfig, as_pruning_config
from holov_patches.registry import get_entry, list_pruners

# model_type -> its adapter: the one table of seams (the adapters import torch only).
ADAPTERS: Dict[str, Type[SequencePruningAdapter]] = {
    "internvl": InternVLAdapter,
    "llava": HFLlavaAdapter,
    "llava_next": HFLlavaNextAdapter,
    "llava_onevision": LlavaOnevisionAdapter,
    "qwen2_5_vl": Qwen2_5_VLAdapter,
    "qwen2_vl": Qwen2VLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
}

_HANDLE_ATTR = "_holov_pruning_handle"


def supported_model_types() -> Tuple[str, ...]:
    return tuple(sorted(ADAPTERS))


class PruningHandle:
    """Returned by :func:`apply`. ``remove()`` restores the model; ``last_prefill`` describes
    the last pruned prefill (column map, kept offsets, position ids). Usable as a context
    manager. An inactive handle (pruning off) patches nothing."""

    def __init__(self, model: nn.Module, config: Optional[PruningConfig], adapter):
        self.model = model
        self.config = config
        self.adapter = adapter
        self.removed = False

    @property
    def active(self) -> bool:
        return self.adapter is not None and not self.removed

    @property
    def last_prefill(self):
        return None if self.adapter is None else self.adapter.last_prefill

    def remove(self) -> None:
        if self.removed:
            raise RuntimeError("this pruning handle was already removed")
        if self.adapter is not None:
            self.adapter.remove()
        if self.model.__dict__.get(_HANDLE_ATTR) is self:
            del self.model.__dict__[_HANDLE_ATTR]
        self.removed = True

    def __enter__(self) -> "PruningHandle":
        return self

    def __exit__(self, *exc) -> None:
        if not self.removed:
            self.remove()

    def __repr__(self) -> str:
        what = self.config.describe() if self.config is not None else "pruning off"
        state = "removed" if self.removed else ("active" if self.adapter is not None else "inactive")
        return f"PruningHandle({self.model.config.model_type}, {what}, {state})"


ADAPTER_INPUTS = ("cls_attn",)  # what every family adapter can compute for a method


def adapter_methods() -> list:
    """The registry's methods the transformers adapters run: after the projector, needing at most the [CLS] row."""
    return [n for n in list_pruners(stage="projector") if set(get_entry(n).needs) <= set(ADAPTER_INPUTS)]


def apply(model: nn.Module, config: Any) -> PruningHandle:
    """Turn pre-LLM visual token pruning on for ``model`` (one instance).

    ``config``: a PruningConfig, dict, string or None. None or method 'none'/'off' gives an
    inactive handle that changes nothing (so callers can pass ``resolve_pruning_config(...)``
    straight through). Applying twice to the same model raises; remove the first handle."""
    if model.__dict__.get(_HANDLE_ATTR) is not None:
        raise RuntimeError(f"HoloV pruning is already applied to this model ({model.__dict__[_HANDLE_ATTR]!r}); "
                           "call handle.remove() first")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(f"model_type={model_type!r} has no pruning adapter; supported: {', '.join(supported_model_types())}")
    cfg = as_pruning_config(config)
    if cfg is not None and cfg.is_off:
        cfg = None
    adapter = None
    if cfg is not None:
        if cfg.stage == "llm":
            raise ValueError(f"method {cfg.method!r} runs inside the LLM (stage={cfg.stage!r}); the {model_type} adapter "
                             "applies pre-LLM pruners only")
        entry = get_entry(cfg.method)
        if entry.stage == "tower":
            raise ValueError(f"method {cfg.method!r} prunes inside the vision tower (before the projector), which the "
                             f"transformers adapters do not support; use one of: {', '.join(adapter_methods())} "
                             "(e.g. 'visionzip_projected')")
        missing = [n for n in entry.needs if n not in ADAPTER_INPUTS]
        if missing:
            raise ValueError(f"method {cfg.method!r} needs {missing}, which the transformers adapters do not compute "
                             f"(they compute {list(ADAPTER_INPUTS)}); use one of: {', '.join(adapter_methods())}")
        adapter = ADAPTERS[model_type](model, cfg)
        adapter.install()
    handle = PruningHandle(model, cfg, adapter)
    model.__dict__[_HANDLE_ATTR] = handle
    return handle
