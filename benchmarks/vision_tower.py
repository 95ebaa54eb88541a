"""Time the CLIP tower three ways, in one run, at CLIP-L/336 size with random weights:

  plain   transformers' CLIPVisionModel with SDPA and output_hidden_states (how LLaVA runs it)
  ours    SDPA, stop after the selected layer, plus the [CLS] -> patch attention row
  eager   eager attention with output_attentions=True (how the authors get the [CLS] row)

    python -m benchmarks.vision_tower [--device cuda] [--batch 1] [--reps 3] [--size large|tiny]

Prints median times and the ratios to plain (goal: ours <= 1.05x plain).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.multimodal_encoder.clip_encoder import run_clip_vision

SIZES = {
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
}


def _time(fn, reps: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (CUDA default)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--size", choices=sorted(SIZES), default="large")
    p.add_argument("--select-layer", type=int, default=-2)
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float16 if a.device.startswith("cuda") else torch.float32)
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=336, patch_size=14, **SIZES[a.size])
    model = CLIPVisionModel(cfg).to(a.device, dtype).eval()
    pixels = torch.randn(a.batch, 3, 336, 336, device=a.device, dtype=dtype)

    def plain():
        model.set_attn_implementation("sdpa")
        return model(pixels, output_hidden_states=True).hidden_states[a.select_layer]

    def ours():
        return run_clip_vision(model, pixels, a.select_layer, with_cls_attn=True)

    def eager():
        model.set_attn_implementation("eager")
        out = model(pixels, output_hidden_states=True, output_attentions=True)
        model.set_attn_implementation("sdpa")
        return out.attentions[a.select_layer][:, :, 0, 1:].mean(1)

    with torch.no_grad():
        times = {name: _time(fn, a.reps, a.device) for name, fn in (("plain", plain), ("ours", ours), ("eager", eager))}
    print(f"CLIP tower ({a.size}, 336px/14, batch {a.batch}, {a.device}, {dtype}), median of {a.reps}:")
    print("| variant | seconds | x plain |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.4f} | {t / times['plain']:.3f} |")
    return times


if __name__ == "__main__":
    main()
