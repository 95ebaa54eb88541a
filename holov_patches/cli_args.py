"""The one table of pruning flags. Every entry point is generated from it:

- argparse CLIs (chat CLI, run_llava, eval entry points, visualiser): :func:`add_pruning_args`
  adds ``--holov-tokens`` / ``--holov_tokens`` ...; :func:`pruning_config_from_args` reads them;
- training: ``llava.train.arguments.PruningArguments`` is :func:`pruning_dataclass_fields`;
- the lmms-eval plugin's ``--model_args``: :func:`pruning_config_from_values` (strings or typed values);
- the shell scripts: ``python -m holov_patches.cli_args --shell`` turns the scripts'
  variables (``TOKENS=64 METHOD=holov MODE=improved RANK_BY=attention ...``) into flags and a
  results-folder label that names every option set, so two settings never share a folder.

Adding a pruning option = one row in ``FLAGS`` (and the ``PruningConfig`` field it fills).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from holov_patches.config import ATTENTION_DTYPES, IMPROVED_OPTIONS, MODES, POSITION_IDS, PruningConfig


@dataclass(frozen=True)
class PruningFlag:
    name: str                      # python name: --holov-tokens / --holov_tokens, lmms-eval key, training field
    config_field: str              # the PruningConfig field it fills
    type: Callable[[str], Any]     # how a command-line string becomes a value
    help: str
    shell: str                     # the shell scripts' variable
    choices: Optional[Tuple[str, ...]] = None
    label: Optional[str] = None    # part of the results-folder label when set (None: not labelled)

    @property
    def option_strings(self) -> Tuple[str, str]:
        return "--" + self.name.replace("_", "-"), "--" + self.name

    def parse(self, value: Any) -> Any:
        """A value from a string (or already typed) source; blank and 'none' mean unset
        (except ``prune_method=none``, which switches pruning off)."""
        if isinstance(value, str):
            text = value.strip()
            if not text or (text.lower() == "none" and self.name != "prune_method"):
                return None
            try:
                value = self.type(text)
            except ValueError:
                raise ValueError(f"{self.name}={text!r} is not a valid {self.type.__name__}") from None
        if value is not None and self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name}={value!r} is not one of {self.choices}")
        return value


def _improved(name: str, what: str) -> PruningFlag:
    choices, default, _ = IMPROVED_OPTIONS[name]
    return PruningFlag(f"holov_{name}", name, str, f"improved mode: {what} (default {default!r})", name.upper(),
                       choices=tuple(choices), label=name)


FLAGS: Tuple[PruningFlag, ...] = (
    PruningFlag("prune_method", "method", str, "pruning method from the registry (holov, ...; 'none' turns pruning off)",
                "METHOD"),
    PruningFlag("holov_tokens", "keep", int, "visual tokens kept per image (K), e.g. 64/128/192 of 576", "TOKENS"),
    PruningFlag("prune_ratio", "ratio", float, "fraction of visual tokens pruned, in (0, 1); 0.889 keeps 64 of 576",
                "RATIO", label="ratio"),
    PruningFlag("holov_mode", "mode", str, "HoloV mode: faithful (authors' code, default) or improved", "MODE",
                choices=MODES),
    PruningFlag("holov_crops", "num_crops", int, "HoloV crops P (default: max(1, floor(1024/576 * N / K)))", "CROPS",
                label="crops"),
    PruningFlag("holov_alpha", "alpha", float, "HoloV diversity weight (default 0.09)", "ALPHA", label="alpha"),
    _improved("crop_shape", "2-D 'square' crops or the released 1-D 'raster' runs"),
    _improved("rank_by", "rank inside a crop by the 'combined' score or raw 'attention'"),
    _improved("diversity_scale", "normalise the diversity term per 'crop' or over the whole 'image'"),
    PruningFlag("holov_position_ids", "position_ids", str,
                "positions after pruning: 'compact' renumbering (authors) or each kept token's 'original' position "
                "(default: original for improved HoloV, compact otherwise)", "POSITION_IDS", choices=POSITION_IDS,
                label="positions"),
    PruningFlag("holov_attention_dtype", "attention_dtype", str,
                "dtype of the [CLS] attention row: 'model' (as the authors' eager path, default) or 'float32'",
                "ATTENTION_DTYPE", choices=ATTENTION_DTYPES, label="attn"),
)
FLAG_NAMES = tuple(f.name for f in FLAGS)


def pruning_config_from_values(values: Mapping[str, Any]) -> Optional[PruningConfig]:
    """{flag name: value} -> PruningConfig, or None when no flag is set (so the environment or
    the saved config applies). Unknown names raise, listing the known ones."""
    unknown = sorted(set(values) - set(FLAG_NAMES))
    if unknown:
        raise ValueError(f"unknown pruning option(s) {unknown}; known: {list(FLAG_NAMES)}")
    given = {}
    for flag in FLAGS:
        value = flag.parse(values.get(flag.name))
        if value is not None:
            given[flag.config_field] = value
    return PruningConfig(**given) if given else None


# ---------------------------------------------------------------- argparse
def add_pruning_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("visual-token pruning (HoloV-LLaVA)")
    for flag in FLAGS:
        group.add_argument(*flag.option_strings, dest=flag.name, type=flag.type, choices=flag.choices, default=None,
                           help=flag.help)
    return parser


def pruning_config_from_args(args: argparse.Namespace) -> Optional[PruningConfig]:
    """``None`` when no pruning flag was given, so the environment or saved config applies."""
    return pruning_config_from_values({flag.name: getattr(args, flag.name, None) for flag in FLAGS})


# ---------------------------------------------------------------- training (HfArgumentParser dataclass)
def pruning_dataclass_fields() -> List[Tuple[str, Any, Any]]:
    """(name, type, dataclasses.field) rows for ``dataclasses.make_dataclass``."""
    rows = []
    for flag in FLAGS:
        metadata: Dict[str, Any] = {"help": flag.help}
        if flag.choices is not None:
            metadata["choices"] = list(flag.choices)
        rows.append((flag.name, Optional[flag.type], field(default=None, metadata=metadata)))
    return rows


# ---------------------------------------------------------------- shell scripts
def shell_setting(environ: Mapping[str, str], full_tokens: int) -> Tuple[str, int, List[str]]:
    """(results label, K, flags) from the shell variables of ``FLAGS``.

    TOKENS empty or equal to ``full_tokens`` is the unpruned run: label ``unpruned``, flags
    ``--prune-method none``. Otherwise METHOD defaults to holov (MODE to faithful); the label
    is the method (``holov-<mode>`` for a HoloV mode other than faithful) followed by
    ``-<label>-<value>`` for every labelled option that is set, in table order."""
    raw = {flag.name: environ.get(flag.shell, "") for flag in FLAGS}
    tokens = raw["holov_tokens"].strip()
    others = {flag.shell: raw[flag.name] for flag in FLAGS
              if flag.name not in ("holov_tokens", "prune_method", "holov_mode") and raw[flag.name].strip()}
    if not tokens or tokens == str(full_tokens):
        if others:
            raise ValueError(f"{sorted(others)} set for the unpruned run (TOKENS={tokens or 'empty'}): set TOKENS < "
                             f"{full_tokens} or unset them")
        return "unpruned", full_tokens, ["--prune-method", "none"]
    if not tokens.isdigit() or int(tokens) < 1:
        raise ValueError(f"TOKENS={tokens} must be a positive integer (or empty / {full_tokens} for no pruning)")
    if int(tokens) > full_tokens:
        raise ValueError(f"TOKENS={tokens} must be below FULL_TOKENS={full_tokens} (or equal to it for no pruning)")
    raw["prune_method"] = raw["prune_method"].strip() or "holov"
    if raw["prune_method"] == "holov":
        raw["holov_mode"] = raw["holov_mode"].strip() or "faithful"
    elif raw["holov_mode"].strip() not in ("", "faithful"):
        raise ValueError(f"MODE={raw['holov_mode']} only applies to METHOD=holov (METHOD={raw['prune_method']})")
    else:
        raw["holov_mode"] = ""
    config = pruning_config_from_values(raw)  # validates every value and combination
    if config.method != "holov" and (config.num_crops is not None or raw["holov_alpha"].strip()):
        raise ValueError(f"CROPS / ALPHA only apply to METHOD=holov (METHOD={config.method})")
    label = config.method if config.method != "holov" or config.mode == "faithful" else f"holov-{config.mode}"
    flags: List[str] = []
    for flag in FLAGS:
        value = flag.parse(raw[flag.name])
        if value is None:
            continue
        flags += [flag.option_strings[0], str(value)]
        if flag.label is not None:
            label += f"-{flag.label}-{value}"
    return label, int(tokens), flags


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m holov_patches.cli_args",
                                     description="Print the pruning flags of the shell variables as shell assignments.")
    parser.add_argument("--shell", action="store_true", required=True,
                        help="print RUN_LABEL=..., RUN_K=... and PRUNE_FLAGS=(...) for `eval`")
    parser.add_argument("--full-tokens", type=int, default=int(os.environ.get("FULL_TOKENS", "576") or 576))
    args = parser.parse_args(argv)
    try:
        label, keep, flags = shell_setting(os.environ, args.full_tokens)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"RUN_LABEL={shlex.quote(label)}")
    print(f"RUN_K={keep}")
    print("PRUNE_FLAGS=(" + " ".join(shlex.quote(f) for f in flags) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
