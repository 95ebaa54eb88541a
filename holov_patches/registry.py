"""One registry for every visual-token pruner.

Every method declares, when it registers, WHERE it runs and WHAT it needs; integrations
read the declaration (:func:`get_entry`) and compute only those inputs.

Stages (``STAGES``):

- ``"tower"``: after the vision tower, before the projector. ``tokens`` are the selected
  tower layer's patch features [B, N, C]; the kept rows go through the projector afterwards.
- ``"projector"``: after the projector. ``tokens`` are the projected patches [B, N, D].
- ``"llm"``: inside the language model (FastV, DART); the callable has the signature its
  in-LLM hooks document.

``"pre_llm"`` names the first two together (``list_pruners(stage="pre_llm")``).

A pre-LLM pruner has exactly one signature::

    pruner(tokens, cls_attn, keep, *, grid=None, **inputs_and_options) -> (kept_tokens, kept_index)

- ``tokens``   [B, N, *] the patches at the method's stage (any float dtype)
- ``cls_attn`` [B, N] the attention the tower's [CLS] query pays each patch in the selected
  layer, heads averaged, or None when the method does not declare ``"cls_attn"``
- ``keep``     K, the number of rows to keep per image (int >= 1)
- ``grid``     optional (rows, cols) of the patch layout, rows * cols == N
- every other declared input (``INPUTS``) arrives as a keyword of the same name;
- returns ``kept_tokens`` [B, K, *] in the input dtype and ``kept_index`` [B, K] int64:
  0..N-1 the patch a row is, ``PAD_INDEX`` (-1) a zero pad (only faithful HoloV makes
  them), ``NO_SOURCE_INDEX`` (-2) a row that is not one input patch (a [CLS] row or a
  merged row; only methods registered with ``merges=True`` return it).

This module imports no method: the files of ``holov_patches.methods`` register themselves
(timm style). ``holov_patches/__init__.py`` (which runs before this module can be imported)
installs the loader of that package, and every lookup (:func:`get_entry`, :func:`get_pruner`,
:func:`list_pruners`) and registration runs it first, once: the built-in methods are filed
before anyone can look one up or register a name of theirs, yet ``import holov_patches``
and the torch-free modules (``config``, ``cli_args``) do not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Callable, Dict, List, Optional, Sequence, Tuple

STAGES = ("tower", "projector", "llm")
PRE_LLM_STAGES = ("tower", "projector")
PAD_INDEX = -1
NO_SOURCE_INDEX = -2

# What a pre-LLM method may declare it needs, besides ``tokens`` and ``keep``. Shapes are per
# call; N counts patches only ([CLS] excluded), all in the tower's dtype unless said otherwise.
INPUTS: Dict[str, str] = {
    "cls_attn": "[B, N] [CLS] -> patch attention of the selected tower layer, heads averaged",
    "cls_attn_heads": "[B, H, N] the same row per head, in the tower's dtype (methods that sum heads themselves)",
    "keys": "[B, N, Dh] the selected layer's attention keys of the patches, averaged over heads",
    "cls_token": "[B, C] the selected layer's [CLS] hidden state (before the projector)",
    "image_embeds": "[B, N, E] the patches through the tower's post-layernorm and visual projection (CLIP space)",
    "text_embeds": "[B, E] (or [B, M, E] for M 77-token segments) the instruction's embedding from the CLIP text "
                   "tower of the same checkpoint",
}


@dataclass(frozen=True)
class PrunerEntry:
    name: str
    fn: Callable
    stage: str
    summary: str
    needs: Tuple[str, ...] = ("cls_attn",)
    merges: bool = False
    default_ratio: Optional[float] = None  # budget when neither keep nor ratio is given (None: DEFAULT_KEEP)

    @property
    def pre_llm(self) -> bool:
        return self.stage in PRE_LLM_STAGES


_REGISTRY: Dict[str, PrunerEntry] = {}

# Imports the built-in methods; installed by holov_patches/__init__.py (a hook rather than an
# import here: the methods import this module, and nothing imports in a circle).
_builtin_loader: Optional[Callable[[], None]] = None
_builtins_loaded = False


def load_builtin_methods() -> None:
    """Register the built-in methods now, if not done yet (every lookup calls this).

    A loader that fails (torch missing, a broken method file) re-raises, and the names it
    had filed are taken back so that the next lookup tries again from scratch."""
    global _builtins_loaded
    if _builtins_loaded or _builtin_loader is None:
        return
    _builtins_loaded = True  # first: the method files call register_pruner while they load
    before = set(_REGISTRY)
    try:
        _builtin_loader()
    except BaseException:
        for name in set(_REGISTRY) - before:
            del _REGISTRY[name]
        _builtins_loaded = False
        raise


def register_pruner(name: str, *, stage: str = "projector", needs: Sequence[str] = ("cls_attn",),
                    merges: bool = False, default_ratio: Optional[float] = None):
    """Decorator filing ``fn`` under ``name``; a duplicate name or an unknown stage/need raises.
    ``default_ratio``: the fraction pruned when a config gives neither keep nor ratio (the
    method paper's main setting); None means PruningConfig's DEFAULT_KEEP."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {STAGES}")
    if default_ratio is not None and (isinstance(default_ratio, bool) or not isinstance(default_ratio, (int, float))
                                      or not 0.0 < default_ratio < 1.0):
        raise ValueError(f"default_ratio={default_ratio!r} must be a float in the open interval (0, 1) or None")
    needs = tuple(needs)
    unknown = [n for n in needs if n not in INPUTS]
    if stage != "llm" and unknown:
        raise ValueError(f"pruner {name!r} needs unknown inputs {unknown}; known: {sorted(INPUTS)}")

    def wrap(fn: Callable) -> Callable:
        load_builtin_methods()  # so that a name a built-in method holds is refused here, not later
        if name in _REGISTRY:
            raise ValueError(f"pruner {name!r} is already registered (by {_REGISTRY[name].fn.__module__})")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = PrunerEntry(name=name, fn=fn, stage=stage, summary=summary,
                                      needs=needs if stage != "llm" else (), merges=bool(merges),
                                      default_ratio=None if default_ratio is None else float(default_ratio))
        return fn

    return wrap


def get_entry(name: str) -> PrunerEntry:
    load_builtin_methods()
    if name not in _REGISTRY:
        raise ValueError(f"unknown pruning method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_pruner(name: str) -> Callable:
    """The callable registered under ``name``; an unknown name lists the known ones."""
    return get_entry(name).fn


def _in_stage(entry: PrunerEntry, stage: Optional[str]) -> bool:
    if stage is None:
        return True
    if stage == "pre_llm":
        return entry.pre_llm
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {STAGES + ('pre_llm',)}")
    return entry.stage == stage


def list_pruners(pattern: str = "*", stage: Optional[str] = None) -> List[str]:
    """Registered names matching a wildcard ``pattern``, optionally of one ``stage`` ("pre_llm" = tower + projector)."""
    load_builtin_methods()
    return sorted(n for n, e in _REGISTRY.items() if fnmatch(n, pattern) and _in_stage(e, stage))
