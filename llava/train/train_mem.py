"""Entry point of the training scripts: ``train`` with the fastest attention available.

LLaVA's ``train_mem.py`` monkey-patched LLaMA's attention with flash-attention; here the
model is simply loaded with ``attn_implementation="flash_attention_2"`` when the
``flash_attn`` package and a CUDA device are present, and with SDPA otherwise (with a
warning, since SDPA uses more memory for long sequences on GPUs).
"""
from __future__ import annotations

import importlib.util
import logging

import torch

from llava.train.train import train

logger = logging.getLogger(__name__)


def choose_attn_implementation() -> str:
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if has_flash and torch.cuda.is_available():
        return "flash_attention_2"
    reason = "no CUDA device" if has_flash else "the flash_attn package is not installed"
    logger.warning("flash-attention 2 is not used (%s); training with SDPA attention instead", reason)
    return "sdpa"


def main() -> None:
    train(attn_implementation=choose_attn_implementation())


if __name__ == "__main__":
    main()
