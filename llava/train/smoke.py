"""Tiny random start models for the training scripts' CPU smoke mode (``SMOKE=1``) and tests.

    python -m llava.train.smoke ROOT

writes (once; existing ones are kept) under ROOT:
- ``llava-v1.5-tiny/``: a tiny LLaVA-1.5 checkpoint (``llava.model.tiny``), the start of a
  fine-tune; its CLIP tower is ``llava-v1.5-tiny/clip-vit-tiny-patch14-336``;
- ``llama-tiny/``: a plain tiny LLaMA with the same tokenizer, the start of a pretraining
  run (``--vision_tower`` then names the tower above).
Nothing is downloaded; about five seconds.
"""
from __future__ import annotations

import os
import sys
from typing import Dict

from llava.model.tiny import TOWER_DIR, build_tiny_llava, train_tokenizer

LLAVA_DIR = "llava-v1.5-tiny"
LLAMA_DIR = "llama-tiny"


def build_plain_llama(out_dir: str, hidden: int = 64, layers: int = 2, heads: int = 4, vocab_size: int = 512,
                      seed: int = 0) -> str:
    """A LLaMA causal LM with random weights and a LLaMA-style SentencePiece tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    train_tokenizer(out_dir, vocab_size=vocab_size)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def build_smoke_models(root: str) -> Dict[str, str]:
    """{"llava": ..., "llama": ..., "vision_tower": ...} absolute paths under ``root``."""
    root = os.path.abspath(root)
    llava = build_tiny_llava(os.path.join(root, LLAVA_DIR))
    llama = build_plain_llama(os.path.join(root, LLAMA_DIR))
    return {"llava": llava, "llama": llama, "vision_tower": os.path.join(llava, TOWER_DIR)}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m llava.train.smoke ROOT")
    for key, path in build_smoke_models(sys.argv[1]).items():
        print(f"{key}={path}")
