"""Resuming a training run without running code from the checkpoint.

A DeepSpeed checkpoint (``checkpoint-N/global_step*/*_model_states.pt`` and
``*_optim_states.pt``) is a pickle, and DeepSpeed's ``TorchCheckpointEngine.load`` reads it
with ``weights_only=False``: whatever callable the pickle names is called. Inside
:func:`weights_only_loads` every ``torch.load`` runs with ``weights_only=True`` (also when
the caller asked for ``False``), which rebuilds only tensors, containers and plain values,
plus the few DeepSpeed classes below that its checkpoints really hold. Any other global in a
checkpoint makes the load raise ``ValueError``; nothing from it is executed.

The allowed classes were found by saving real ZeRO-2 and ZeRO-3 checkpoints with the
training smoke path (``SMOKE=1 scripts/v1_5/finetune_holov.sh --save_strategy steps``) and
loading every ``global_step*`` file with ``weights_only=True`` until it loaded:

- ``LossScaler`` (and ``DynamicLossScaler``, its fp16 variant, from the same module): the
  loss-scaler state in the optimizer states;
- ``ZeroStageEnum``: the ZeRO stage recorded with the optimizer states;
- ``fragment_address``: the flat-buffer offsets of each parameter (ZeRO-1/2).

Each is a small data holder rebuilt attribute by attribute (no code of the checkpoint's
choosing runs); tensors inside them go through the weights-only path as well.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import pickle
import re
from typing import Iterator, List

import torch

DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def deepspeed_safe_globals() -> List[type]:
    """The classes of DEEPSPEED_SAFE_GLOBALS (none when DeepSpeed is not installed)."""
    out = []
    for dotted in DEEPSPEED_SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue  # no DeepSpeed: its checkpoints cannot be loaded anyway
    return out


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within: ``torch.load`` always loads with ``weights_only=True`` and the DeepSpeed
    safe globals; a pickle naming anything else raises ``ValueError`` naming the file."""
    original = torch.load
    if getattr(original, "_llava_weights_only", False):  # already inside
        yield
        return
    allowed = deepspeed_safe_globals()

    @functools.wraps(original)
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed):
                return original(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            text = str(err)
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if found:
                reason = f"it names the global {found.group(1)}"
            else:
                reason = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line),
                              text.splitlines()[0] if text else type(err).__name__)
            raise ValueError(
                f"refusing to load {f}: it is not plain weights ({reason}). A checkpoint can run code "
                f"when unpickled; only these classes are accepted besides tensors and plain values: "
                f"{', '.join(DEEPSPEED_SAFE_GLOBALS)}") from err

    load._llava_weights_only = True
    torch.load = load
    try:
        yield
    finally:
        torch.load = original
