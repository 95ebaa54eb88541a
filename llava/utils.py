"""Small shared helpers."""
from __future__ import annotations

import torch


def disable_torch_init() -> None:
    """Skip the random init of Linear/LayerNorm weights that loading overwrites anyway (as LLaVA does)."""
    setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)


def pick_device(requested: str) -> str:
    """'cuda' when asked for and available; otherwise a clear error instead of a late crash."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {requested} was asked for but CUDA is not available; use --device cpu")
    return requested


def exit_code_of(fn, *args, debug: bool = False) -> int:
    """Run an entry point's body; a ValueError (bad user input) becomes one clear line on
    stderr and exit code 2 instead of a traceback (re-raised with ``debug``)."""
    import sys

    try:
        fn(*args)
    except ValueError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
