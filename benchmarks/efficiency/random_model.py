"""A LLaVA-1.5 checkpoint of any CLIP-336/14 + LLaMA shape with random weights.

Why: the efficiency report (``python -m benchmarks.efficiency --random-7b``) must time
prefill and decode at the real LLaVA-1.5-7B shape, where the speedups of visual-token
pruning are claimed (HoloV, arXiv 2510.02912), on a machine that holds no downloaded
weights. Timing and memory depend on the shapes and dtype, not on the weight values, so
random float16 weights give the same costs as the released checkpoint.
"""
from __future__ import annotations

import os

import torch
from transformers import AutoTokenizer

from benchmarks.efficiency.flops import LlavaShape
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.checkpoint_compat import make_checkpoint_compatible
from llava.model.tiny import build_tiny_llava, to_original_config


def build_random_llava(out_dir: str, shape: LlavaShape, device: str = "cpu", dtype: torch.dtype = torch.float16) -> str:
    """A checkpoint of ``shape`` with random weights in the original LLaVA-1.5 layout.

    The tokenizer, the CLIP tower (random, ``shape.vision``) and the LLaVA config come from
    ``build_tiny_llava``; the language model is then rebuilt at full shape directly on
    ``device`` (fast random init on a GPU) in ``dtype`` and saved over the tiny one, so the
    report loads it through ``load_pretrained_model`` like any checkpoint."""

    v, m = shape.vision, shape.llm
    if v.hidden * 4 != v.intermediate or (v.image_size, v.patch_size, v.select_layer) != (336, 14, -2):
        raise ValueError(f"build_random_llava makes CLIP-336/14 towers with MLP 4 x hidden and select layer -2; got {v}")
    build_tiny_llava(out_dir, hidden=64, layers=1, heads=4, vision_hidden=v.hidden, vision_layers=v.layers,
                     vision_heads=v.heads, vocab_size=512, force=True)
    config = LlavaConfig.from_pretrained(out_dir)
    config.update(dict(hidden_size=m.hidden, num_hidden_layers=m.layers, num_attention_heads=m.heads,
                       num_key_value_heads=m.kv_heads, head_dim=m.head_dim, intermediate_size=m.intermediate,
                       vocab_size=m.vocab))
    config._name_or_path = out_dir  # the tower path is relative to the checkpoint
    for name in os.listdir(out_dir):
        if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
            os.remove(os.path.join(out_dir, name))
    with torch.device(device):
        model = LlavaLlamaForCausalLM._from_config(config, dtype=dtype)
    model.save_pretrained(out_dir)
    del model
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    to_original_config(os.path.join(out_dir, "config.json"))
    # The loader resizes the embeddings to len(tokenizer), as the original LLaVA does: pad the
    # tiny tokenizer with unused tokens up to the shape's vocabulary so nothing is cut.
    tokenizer = AutoTokenizer.from_pretrained(out_dir, use_fast=False)
    missing = m.vocab - len(tokenizer)
    if missing < 0:
        raise ValueError(f"vocab={m.vocab} is smaller than the tiny tokenizer's {len(tokenizer)} tokens")
    if missing:
        tokenizer.add_tokens([f"<unused_{i}>" for i in range(missing)])
        tokenizer.save_pretrained(out_dir)
    make_checkpoint_compatible(out_dir, tokenizer)  # loads in the original LLaVA (transformers 4.37) too
    return out_dir
