"""The named options of HoloV's improved mode, in one table.

Faithful mode reproduces the authors' released code and takes none of them; every way
in which improved mode departs from that code is one of these names, so a result can
say exactly which departures produced it (see docs/holov.md). The table imports
nothing so that ``holov_patches.config`` can validate against it.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

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
