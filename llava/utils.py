"""Small shared helpers."""
from __future__ import annotations

import argparse

import torch


class LlavaArgumentParser(argparse.ArgumentParser):
    """argparse with LLaVA's two spellings: every ``--max-new-tokens`` is also
    ``--max_new_tokens`` and the other way round (LLaVA's scripts mix them)."""

    def add_argument(self, *names, **kwargs):
        spelled = list(names)
        for name in names:
            if name.startswith("--"):
                for other in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
                    if other not in spelled:
                        spelled.append(other)
        return super().add_argument(*spelled, **kwargs)


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu`` (LLaVA's scripts assume ``cuda``)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


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


PARENT_ENV = "HOLOV_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = None) -> bool:
    """When a launcher asks for it, end this process with its parent.

    ``scripts/v1_5/eval/_common.sh`` starts its workers with ``HOLOV_DIE_WITH_PARENT=<its
    PID>``; then (on Linux) ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` makes the kernel send this
    process SIGTERM when that parent dies, even by ``kill -9``, so no orphaned worker keeps
    appending to an answers file beside a rerun. A parent that already died before this call
    ends the process at once. Without the variable (a run started by hand, under ``nohup``
    or ``screen``) nothing changes: such a run is meant to outlive its shell. Returns whether
    the tie was made. The variable is removed so that other programs this one starts do
    not inherit it."""
    import os
    import signal

    wanted = os.environ.pop(PARENT_ENV, None)
    if not wanted:
        return False
    if not wanted.strip().isdigit():
        raise ValueError(f"{PARENT_ENV}={wanted!r} must be the PID of the launching process")
    if not sys_platform_is_linux():
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    sig = signal.SIGTERM if sig is None else sig
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(wanted):  # the parent died before the tie was made
        os.kill(os.getpid(), sig)
        os._exit(128 + int(sig))  # in case sig is handled
    return True


def sys_platform_is_linux() -> bool:
    import sys

    return sys.platform.startswith("linux")
