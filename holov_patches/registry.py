"""One registry for every visual-token pruner.

A pruner that runs before the LLM has exactly one signature::

    pruner(tokens, cls_attn, keep, *, grid=None, **options) -> (kept_tokens, kept_index)

- ``tokens``   [B, N, D] visual tokens after the projector (any float dtype)
- ``cls_attn`` [B, N] attention the vision tower's [CLS] query pays each token
- ``keep``     K, the number of tokens to keep per image (int >= 1)
- ``grid``     optional (rows, cols) of the patch layout, rows * cols == N
- returns ``kept_tokens`` [B, K, D] in the input dtype and ``kept_index`` [B, K]
  int64 positions in 0..N-1 (-1 marks a zero pad, which only faithful HoloV makes).

A method that works inside the LLM (FastV) registers with ``stage="llm"``; its
callable has the signature its adapter documents.

This module imports no method: ``holov_patches/__init__.py`` imports
``holov_patches.methods``, whose files register themselves (timm style), so the built-in
methods are filed before any caller can look one up.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Callable, Dict, List, Optional

STAGES = ("pre_llm", "llm")


@dataclass(frozen=True)
class PrunerEntry:
    name: str
    fn: Callable
    stage: str
    summary: str


_REGISTRY: Dict[str, PrunerEntry] = {}


def register_pruner(name: str, *, stage: str = "pre_llm"):
    """Decorator filing ``fn`` under ``name``; a duplicate name raises."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {STAGES}")

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"pruner {name!r} is already registered (by {_REGISTRY[name].fn.__module__})")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = PrunerEntry(name=name, fn=fn, stage=stage, summary=summary)
        return fn

    return wrap


def get_entry(name: str) -> PrunerEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown pruning method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_pruner(name: str) -> Callable:
    """The callable registered under ``name``; an unknown name lists the known ones."""
    return get_entry(name).fn


def list_pruners(pattern: str = "*", stage: Optional[str] = None) -> List[str]:
    """Registered names matching a wildcard ``pattern``, optionally of one ``stage``."""
    return sorted(n for n, e in _REGISTRY.items() if fnmatch(n, pattern) and (stage is None or e.stage == stage))
