"""Small shared helpers.

No torch at import time: the entry points parse their flags with this module's parser
before they import the model code, so ``--help`` and a mistyped flag answer at once."""
from __future__ import annotations

import argparse
import logging
import re
from typing import Optional


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
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE_HELP = "cuda (default when a GPU is usable) or cpu"


def add_device_arg(parser: argparse.ArgumentParser, *, probe: bool = True) -> None:
    """``--device``. Its default is :func:`default_device`, which imports torch to ask for
    a GPU; ``probe=False`` (what the entry points' ``main`` uses) leaves it None instead, so
    that ``--help`` and a bad flag never wait for torch, and :func:`pick_device` fills it in
    after parsing."""
    parser.add_argument("--device", type=str, default=default_device() if probe else None, help=DEVICE_HELP)


def pick_device(requested: Optional[str]) -> str:
    """'cuda' when asked for and available; otherwise a clear error instead of a late crash.
    None (``--device`` not given, parser built with ``probe=False``) is :func:`default_device`."""
    import torch

    if requested is None:
        return default_device()
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


# Known third-party messages that tell our users nothing: (logger name, regex over the whole
# message), matched exactly on the one logger that emits it; the comment above each says why
# it is noise. Python warnings (``warnings.filterwarnings`` by exact message) would go here
# too; the demo, run_llava and the eval entry points raise none (transformers 5.24, torch 2.13, CPU).
KNOWN_NOISE = (
    # Emitted on every generate() call when the checkpoint's generation_config.json holds a
    # max_length (vicuna's 4096, which LLaVA fine-tunes of it inherit). Every entry point passes its
    # --max-new-tokens flag, which is meant to win, and the message says that it does.
    ("transformers.generation.utils",
     r"Both `max_new_tokens` \(=\d+\) and `max_length`\(=\d+\) seem to have been set\. `max_new_tokens` will take "
     r"precedence\. Please refer to the documentation for more information\. "
     r"\(https://huggingface\.co/docs/transformers/main/en/main_classes/text_generation\)"),
    # Emitted once at load when the checkpoint's generation_config.json sets sampling values
    # (vicuna's temperature 0.9, top_p 0.6) without do_sample. Every entry point sets do_sample
    # (and the temperature) per call from its own flags, so the file's inconsistency is not the
    # user's to fix. Only these sampling flags: a message naming any other flag still shows.
    ("transformers.generation.configuration_utils",
     r"The following generation flags are not valid and may be ignored: \['(temperature|top_p|top_k)'"
     r"(, '(temperature|top_p|top_k)')*\]\.( Set `TRANSFORMERS_VERBOSITY=info` for more details\.)?"),
)


class _DropExactMessages(logging.Filter):
    """Drops the records of one logger whose whole message matches one of ``patterns``."""

    def __init__(self, patterns):
        super().__init__()
        self.patterns = [re.compile(p, re.DOTALL) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.fullmatch(message) for p in self.patterns)


def quiet_known_warnings() -> None:
    """Install the filters of :data:`KNOWN_NOISE` (once; calling again changes nothing).

    The entry points call it before they load a model. Only the exact messages listed are
    dropped: any other message of the same logger, level or category still shows."""
    by_logger = {}
    for name, pattern in KNOWN_NOISE:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)  # the logger transformers' get_logger(name) returns
        if not any(isinstance(f, _DropExactMessages) for f in logger.filters):
            logger.addFilter(_DropExactMessages(patterns))
