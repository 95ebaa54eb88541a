"""Efficiency report: what visual-token pruning saves in LLaVA-1.5, counted and measured.

    python -m benchmarks.efficiency --model-path P [--device cuda] [--keeps 576 192 128 64]
        [--method holov] [--reps 3] [--new-tokens 8] [--rounds 1] [--out results/efficiency]
        [--model-command "how P was made"] [--compare EARLIER.csv ...] [--threads N]
    python -m benchmarks.efficiency --random-7b --device cuda   # LLaVA-1.5-7B shape, random weights

``--random-7b`` writes a LLaVA-1.5-7B-shaped checkpoint (Vicuna-7B LLM, CLIP-L/336 tower,
random float16 weights, ~15 GB) to a temporary directory (or ``--random-dir``) and loads
it like any other; it refuses to run on CPU unless ``--allow-cpu-7b`` is given.

Why: HoloV (arXiv 2510.02912) and the pruners it is compared with are sold on a cheaper
prefill. This puts the analytic count (``benchmarks.efficiency.flops``) beside what one model,
loaded once through ``load_pretrained_model``, really does in one process, for every K
(K = 576 is the unpruned run, ``set_pruning(None)``; the others use
``set_pruning(PruningConfig(method, keep=K))``):

- vision-tower time (the tower alone, with the [CLS] row when a pruner needs it);
- pruner time (``prune_visual_tokens`` on the real projected features and [CLS] row);
- prefill time = time to first token: one forward over the spliced prompt with
  ``use_cache=True`` and ``logits_to_keep=1`` (tower + projector + pruner + LLM + argmax;
  tokenization and image preprocessing are done once, outside);
- per-token decode time: ``generate`` with min_new_tokens = max_new_tokens = N; a stopping
  criterion stamps the clock after every token, and (last - first stamp) / (N - 1) is the
  time per token after the first (the whole-``generate`` time minus the separately
  measured prefill, divided by N - 1, is reported beside it: it differences two noisy
  numbers);
- peak memory of the prefill beyond what was allocated before it (activations + KV
  cache): ``torch.cuda.max_memory_allocated`` on CUDA (also reported in total, weights
  included); on CPU the running total of the tensor allocations recorded by
  ``torch.profiler`` (``profile_memory=True``) in a separate, untimed pass; there is no
  whole-process total on CPU, so that column says n/a;
- KV-cache bytes: the formula 2 x layers x KV heads x head dim x T x bytes per element,
  checked against the cache tensors that prefill returns.

Times are medians of ``--reps`` after one warm-up pass; the K values are interleaved
within each repetition so that load from other processes hits every K alike; on CUDA every
timed region is bracketed by ``torch.cuda.synchronize()``. Everything is also given as a
ratio to the unpruned run of the same round. ``--rounds R`` repeats the whole timed
measurement R times in the process and reports each round. Outputs ``<out>.md``,
``<out>.csv`` and ``<out>.png`` (ratios against K).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from benchmarks.efficiency.flops import llava15_7b_shape
from benchmarks.efficiency.measure import DEFAULT_KEEPS, Report, build_prompt, check_method, measure
from benchmarks.efficiency.random_model import build_random_llava
from benchmarks.efficiency.report import read_other_run, verdict, write_report
from llava.model.builder import load_pretrained_model
from llava.mm_utils import get_model_name_from_path
from llava.utils import pick_device


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: str) -> Dict[str, str]:
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"{_cpu_name()}, {os.cpu_count()} logical CPUs"
    return {"summary": f"{where}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
                       f"1-min load average {os.getloadavg()[0]:.2f} before loading"}


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="a LLaVA-1.5 checkpoint (e.g. one from `python -m llava.model.tiny`)")
    p.add_argument("--random-7b", action="store_true",
                   help="build a LLaVA-1.5-7B-shaped checkpoint with random float16 weights in a temporary directory")
    p.add_argument("--random-dir", default=None, help="with --random-7b: build it here and keep it (default: a temp dir)")
    p.add_argument("--allow-cpu-7b", action="store_true", help="let --random-7b run on CPU (about 27 GB of RAM, very slow)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--keeps", type=int, nargs="+", default=list(DEFAULT_KEEPS), help="visual tokens kept; 576 = unpruned")
    p.add_argument("--method", default="holov", help="pre-LLM pruner from the registry")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per K (median reported)")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens generated for the decode time (>= 2)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole timed measurement this many times")
    p.add_argument("--out", default="results/efficiency", help="output prefix: writes <out>.md, <out>.csv, <out>.png")
    p.add_argument("--model-command", default=None,
                   help="how --model-path was made (e.g. the `python -m llava.model.tiny ...` line), quoted in the report")
    p.add_argument("--compare", nargs="+", default=[], metavar="CSV",
                   help="earlier runs' CSVs (same report): their K=64 speedups are listed and summarised with this run's")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    return p.parse_args(argv)


def _load(path: str, device: str):

    tokenizer, model, image_processor, _ = load_pretrained_model(path, None, get_model_name_from_path(path), device=device,
                                                                 pruning=None)
    return tokenizer, model, image_processor


def run(args: argparse.Namespace, command: str) -> Report:

    check_method(args.method)
    others = [read_other_run(path) for path in args.compare]
    if args.random_7b == (args.model_path is not None):
        raise ValueError("give exactly one of --model-path P or --random-7b")
    device = pick_device(args.device)
    if args.random_7b and not device.startswith("cuda") and not args.allow_cpu_7b:
        raise ValueError(f"--random-7b on --device {args.device} refused: a 7B model needs ~27 GB of RAM in float32 and "
                         "minutes per forward on a few CPU cores; use --device cuda, or add --allow-cpu-7b to force it")
    with tempfile.TemporaryDirectory(prefix="llava-v1.5-7b-random-") as tmp:
        if args.random_7b:
            path = args.random_dir or os.path.join(tmp, "llava-v1.5-7b-random")
            print(f"building a random LLaVA-1.5-7B-shaped checkpoint in {path} ...", flush=True)
            build_random_llava(path, llava15_7b_shape(), device=device)
        else:
            path = args.model_path
        machine = machine_summary(device)
        machine["model_command"] = args.model_command
        tokenizer, model, image_processor = _load(path, device)
    prompt = build_prompt(model, tokenizer, image_processor)
    report = measure(model, tokenizer, prompt, args.keeps, args.method, args.reps, args.new_tokens, args.rounds,
                     progress=not args.no_progress)
    report.meta["paths"] = write_report(report, Path(args.out), command, machine, others)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    report = run(args, "python -m benchmarks.efficiency " + shlex.join(argv))
    for v in verdict(report, 64 if 64 in report.keeps else min(report.keeps)):
        print(f"round {v['round']}: prefill speedup {v['speedup']:.2f}x vs FLOPs {v['flops_speedup']:.2f}x ({v['gap'] * 100:+.1f}%)")
    print("wrote " + ", ".join(str(p) for p in report.meta["paths"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
