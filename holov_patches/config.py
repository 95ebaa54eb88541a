"""``PruningConfig``: the one object that carries a pruning setting from a CLI flag,
a script variable, an environment variable or a saved ``config.json`` down to the
pruner. Bad values raise ``ValueError`` naming the value and what is accepted."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence

from holov_patches.registry import get_entry

MODES = ("faithful", "improved")
POSITION_IDS = ("compact", "original")
ATTENTION_DTYPES = ("model", "float32")
OFF_METHODS = ("none", "off")
ENV_VAR = "HOLOV_PRUNING"
DEFAULT_KEEP = 64  # the paper's headline budget (88.9% of 576 pruned); a method may declare a default_ratio

# The named options of HoloV's improved mode. Faithful mode reproduces the authors' released
# code and takes none of them; every way in which improved mode departs from that code is one
# of these names, so a result can say exactly which departures produced it (docs/holov.md).
# name -> (accepted values, improved-mode default, what the default does differently from faithful)
IMPROVED_OPTIONS: Dict[str, tuple] = {
    "crop_shape": (("square", "raster"), "square",
                   "crops are a g x g grid of rectangles on the patch grid (faithful: 1-D raster runs)"),
    "rank_by": (("combined", "attention"), "combined",
                "tokens inside a crop are ranked by a + alpha*scale*var (faithful: raw attention)"),
    "diversity_scale": (("crop", "image"), "crop",
                        "where scale = mean|a| / mean|var| is taken: per crop (as faithful) or over the whole image"),
}


def check_improved_option(name: str, value: Any) -> None:
    """Raise ValueError for an unknown option name or a value outside its choices (None = mode default)."""
    if name not in IMPROVED_OPTIONS:
        raise ValueError(f"unknown HoloV option {name!r}; known improved-mode options: {sorted(IMPROVED_OPTIONS)}")
    choices = IMPROVED_OPTIONS[name][0]
    if value is not None and value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")


def resolve_improved_options(mode: str, options: Mapping[str, Any]) -> Dict[str, str]:
    """Fill the improved-mode defaults; in faithful mode any option that is set raises.

    Faithful mode must stay the authors' behaviour, so an option that would change it is
    a mistake to report rather than to ignore."""
    for name, value in options.items():
        check_improved_option(name, value)
    given = {k: v for k, v in options.items() if v is not None}
    if mode == "faithful":
        if given:
            raise ValueError(f"options {given} only apply to mode='improved'; faithful mode reproduces the released code and takes none")
        return {}
    return {name: given.get(name, spec[1]) for name, spec in IMPROVED_OPTIONS.items()}


def default_num_crops(num_tokens: int, keep: int) -> int:
    """P = max(1, floor((1024 / 576) * N / K)): the authors' Qwen2.5-VL formula, 16 for N=576, K=64."""
    return max(1, math.floor((1024 / 576) * num_tokens / keep))


MAX_ALPHA = 1e6  # alpha * (var * scale) must stay far inside float32 (var * scale is at most ~1e3 * N)


def check_alpha(alpha: Any) -> float:
    """HoloV's diversity weight: a finite number in [0, MAX_ALPHA]."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) \
            or not 0 <= alpha <= MAX_ALPHA:
        raise ValueError(f"alpha={alpha!r} must be a finite number in [0, {MAX_ALPHA:g}]")
    return float(alpha)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class PruningConfig:
    method: str = field(default="holov", metadata={"help": "registered pruning method (see holov_patches.list_pruners())"})
    keep: Optional[int] = field(default=None, metadata={"help": "visual tokens kept per image (K); exclusive with ratio"})
    ratio: Optional[float] = field(default=None, metadata={"help": "fraction of visual tokens pruned, in (0, 1): 0.889 keeps 64 of 576"})
    num_crops: Optional[int] = field(default=None, metadata={"help": "HoloV crops P; default max(1, floor(1024/576 * N / K))"})
    mode: str = field(default="faithful", metadata={"help": "HoloV mode: 'faithful' (authors' code) or 'improved'"})
    alpha: float = field(default=0.09, metadata={"help": "HoloV weight of the similarity-variance (diversity) term"})
    options: Dict[str, Any] = field(default_factory=dict, metadata={"help": "method-specific options passed to the pruner"})
    position_ids: Optional[str] = field(default=None, metadata={"help": "positions of the tokens the LLM sees after pruning: 'compact' (renumbered 0..T'-1, as the authors' LLaVA code does) or 'original' (each kept token keeps the position it had before pruning; decoding continues from the unpruned length); None = 'original' for improved HoloV, 'compact' otherwise"})
    crop_shape: Optional[str] = field(default=None, metadata={"help": "HoloV improved mode only: 'square' (g x g crops on the patch grid, g = round(sqrt(P)); the default) or 'raster' (the released code's 1-D runs); None = the mode's default"})
    rank_by: Optional[str] = field(default=None, metadata={"help": "HoloV improved mode only: rank tokens inside a crop by 'combined' score a + alpha*scale*var (the default) or by raw 'attention' (as the released code); None = the mode's default"})
    attention_dtype: str = field(default="model", metadata={"help": "dtype of the [CLS] attention row: 'model' computes it as the authors' eager path does (softmax and head mean in the tower's dtype, e.g. float16), 'float32' in float32 (more exact, may keep other tokens in half precision)"})
    diversity_scale: Optional[str] = field(default=None, metadata={"help": "HoloV improved mode only: take scale = mean|a| / mean|var| per 'crop' (the default, as the released code) or over the whole 'image', which lets diversity move the budget; None = the mode's default"})

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method={self.method!r} must be a non-empty string")
        self.method = self.method.lower()
        if not self.is_off:
            get_entry(self.method)  # raises with the list of known methods
        if self.keep is not None and self.ratio is not None:
            raise ValueError(f"give keep ({self.keep}) or ratio ({self.ratio}), not both")
        if self.keep is None and self.ratio is None:  # the method's declared default, else DEFAULT_KEEP
            default = None if self.is_off else get_entry(self.method).default_ratio
            if default is None:
                self.keep = DEFAULT_KEEP
            else:
                self.ratio = default
        if self.keep is not None and (not _is_int(self.keep) or self.keep < 1):
            raise ValueError(f"keep={self.keep!r} must be an integer >= 1")
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < float(self.ratio) < 1.0:
                raise ValueError(f"ratio={self.ratio!r} must be a float in the open interval (0, 1)")
            self.ratio = float(self.ratio)
        if self.num_crops is not None and (not _is_int(self.num_crops) or self.num_crops < 1):
            raise ValueError(f"num_crops={self.num_crops!r} must be an integer >= 1 (or None for the default formula)")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {MODES}")
        if self.attention_dtype not in ATTENTION_DTYPES:
            raise ValueError(f"attention_dtype={self.attention_dtype!r} is not one of {ATTENTION_DTYPES}")
        if self.position_ids is not None and self.position_ids not in POSITION_IDS:
            raise ValueError(f"position_ids={self.position_ids!r} is not one of {POSITION_IDS} (or None for the default)")
        self.alpha = check_alpha(self.alpha)
        if not isinstance(self.options, dict):
            raise ValueError(f"options={self.options!r} must be a dict")
        improved = {name: getattr(self, name) for name in IMPROVED_OPTIONS}
        for name, value in improved.items():
            check_improved_option(name, value)
        given = {k: v for k, v in improved.items() if v is not None}
        if given and self.mode != "improved":
            raise ValueError(f"{given} only apply to mode='improved' (mode={self.mode!r}); faithful mode reproduces the released code")

    # ---- derived values -------------------------------------------------
    @property
    def is_off(self) -> bool:
        return self.method in OFF_METHODS

    @property
    def stage(self) -> str:
        return get_entry(self.method).stage

    def resolve_keep(self, num_tokens: int) -> int:
        """K for an image of ``num_tokens`` visual tokens (a ratio is rounded to the nearest token)."""
        if not _is_int(num_tokens) or num_tokens < 1:
            raise ValueError(f"num_tokens={num_tokens!r} must be an integer >= 1")
        if self.keep is not None:
            return self.keep
        return max(1, round(num_tokens * (1.0 - self.ratio)))

    def with_keep(self, keep: int) -> "PruningConfig":
        """The same setting with an absolute budget of ``keep`` tokens (a part's share of K)."""
        return dataclasses.replace(self, keep=keep, ratio=None)

    def split_budget(self, sizes: Sequence[int]) -> List[int]:
        """Tokens kept by each part of a multi-part image (LLaVA-NeXT: base view, high-res map).

        The one rule every integration uses: K = resolve_keep(sum of sizes), at most the
        total; part i gets floor(K * n_i / total), and the tokens left over go one each to
        the parts with the largest remainders (K * n_i mod total; ties to the earlier part).
        So the parts always add up to exactly K, no part gets more than it has, and K = 1
        keeps exactly one token (in the larger part). Exact integer arithmetic."""
        if not sizes or any(not _is_int(n) or n < 0 for n in sizes) or sum(sizes) < 1:
            raise ValueError(f"sizes={list(sizes)!r} must be integers >= 0 with a positive total")
        total = sum(sizes)
        keep = min(self.resolve_keep(total), total)
        base = [keep * n // total for n in sizes]
        remainders = [keep * n % total for n in sizes]
        order = sorted(range(len(sizes)), key=lambda i: -remainders[i])  # stable: ties keep the earlier part first
        for i in order[:keep - sum(base)]:
            base[i] += 1
        return base

    def resolve_num_crops(self, num_tokens: int) -> int:
        return self.num_crops if self.num_crops is not None else default_num_crops(num_tokens, self.resolve_keep(num_tokens))

    @property
    def keeps_original_positions(self) -> bool:
        """Whether kept tokens keep their pre-pruning position ids (see ``position_ids``)."""
        if self.position_ids is not None:
            return self.position_ids == "original"
        return self.method == "holov" and self.mode == "improved"

    def pruner_kwargs(self) -> Dict[str, Any]:
        """Keyword options the registered pruner receives besides tokens, cls_attn, keep and grid."""
        kwargs = dict(self.options)
        if self.method == "holov":
            kwargs.update(num_crops=self.num_crops, mode=self.mode, alpha=self.alpha)
            kwargs.update({name: getattr(self, name) for name in IMPROVED_OPTIONS if getattr(self, name) is not None})
        return kwargs

    def describe(self) -> str:
        if self.is_off:
            return "pruning off"
        budget = f"keep={self.keep}" if self.keep is not None else f"ratio={self.ratio}"
        extra = f", mode={self.mode}, num_crops={self.num_crops or 'auto'}, alpha={self.alpha}" if self.method == "holov" else ""
        extra += "".join(f", {name}={getattr(self, name)}" for name in IMPROVED_OPTIONS if getattr(self, name) is not None)
        extra += f", position_ids={self.position_ids}" if self.position_ids is not None else ""
        extra += f", attention_dtype={self.attention_dtype}" if self.attention_dtype != "model" else ""
        opts = f", options={self.options}" if self.options else ""
        return f"{self.method}({budget}{extra}{opts})"

    # ---- construction ---------------------------------------------------
    @classmethod
    def from_ratio(cls, ratio: float, num_tokens: int = 576, **kwargs) -> "PruningConfig":
        """A config keeping round(num_tokens * (1 - ratio)) tokens: 0.667/0.778/0.889 give 192/128/64 of 576."""
        probe = cls(ratio=ratio, **kwargs)
        return cls(keep=probe.resolve_keep(num_tokens), **kwargs)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "a pruning config") -> "PruningConfig":
        """Refuses unknown keys (a typo such as ``kep`` must not silently give the default budget)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_string(cls, text: str, where: str = "the pruning setting") -> "PruningConfig":
        """Parse JSON (``{"keep": 64}``) or ``key=value,...`` (``method=holov,keep=64,mode=improved``).
        A key given twice, a part without ``=`` and bad JSON raise, naming ``where``."""
        text = text.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} is not valid JSON ({err.msg} at character {err.pos}): {text!r}") from None
            return cls.from_dict(data, where)
        data: Dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise ValueError(f"cannot parse {part!r} in {where} {text!r}: expected key=value")
            key, value = (s.strip() for s in part.split("=", 1))
            if key in data:
                raise ValueError(f"{where} {text!r} gives {key!r} twice")
            data[key] = value if key == "method" else _parse_scalar(value)  # method=none means off
        return cls.from_dict(data, where)


def _parse_scalar(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def as_pruning_config(value: Any, where: str = "pruning") -> Optional[PruningConfig]:
    """Accept a PruningConfig, a dict, a string (JSON or key=value) or None; a blank string is None."""
    if value is None or isinstance(value, PruningConfig):
        return value
    if isinstance(value, Mapping):
        return PruningConfig.from_dict(value, where)
    if isinstance(value, str):
        return PruningConfig.from_string(value, where) if value.strip() else None
    raise ValueError(f"{where}={value!r} must be a PruningConfig, a dict, a string or None")


def resolve_pruning_config(explicit: Any = None, saved: Any = None, environ: Optional[Mapping[str, str]] = None) -> Optional[PruningConfig]:
    """Precedence: explicit argument > environment (``HOLOV_PRUNING``) > saved config > off.

    A config whose method is ``none``/``off`` switches pruning off at its level and
    returns ``None``; a blank ``HOLOV_PRUNING`` counts as unset (it never switches pruning on)."""
    environ = os.environ if environ is None else environ
    sources = ((explicit, "the pruning argument"), (environ.get(ENV_VAR), f"the {ENV_VAR} environment variable"),
               (saved, "the checkpoint's saved 'holov' block"))
    for source, where in sources:
        cfg = as_pruning_config(source, where)
        if cfg is not None:
            return None if cfg.is_off else cfg
    return None
