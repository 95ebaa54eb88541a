"""Count the torch ops a call dispatches: on a GPU each is (at least) one kernel launch,
which is what a per-crop Python loop pays for. Used by benchmarks/pruner.py and the tests."""
from __future__ import annotations

from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts every op that reaches the dispatcher (views included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> int:
    with OpCounter() as counter:
        fn()
    return counter.count
