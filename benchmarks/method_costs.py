"""What each pruning method costs on one loaded LLaVA-1.5 model, at one budget K.

    python -m benchmarks.method_costs --model-path P [--keep 64] [--reps 3] [--device cpu]
        [--methods holov visionzip ...] [--out results/method_costs] [--model-command "how P was made"]

Every method our LLaVA path runs (``llava.model.llava_arch.llava_methods()`` plus the
in-LLM ones), one after the other on the same prompt (the efficiency report's fixed image
and question), in one process:

- inputs: the seconds to compute what the method declares (tower features and its declared
  inputs; projected tokens for projector-stage methods), ``model.pruner_inputs``;
- pruner: the seconds of ``prune_visual_tokens`` on those inputs, and its FLOPs as counted
  by ``torch.utils.flop_counter`` on the real call (in-LLM methods: n/a, they select inside
  the prefill);
- prefill: one forward (the question as ``pruning_text``, for text-conditioned methods) with ``use_cache=True`` (tower, projector, pruner, LLM), as a ratio
  to the unpruned prefill measured in the same repetition.

Times are medians of ``--reps`` after one warm-up; the methods are interleaved within each
repetition so that load from other processes hits them alike. Writes ``<out>.md`` and
``<out>.csv`` (default under ``results/``).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from benchmarks.efficiency.measure import QUESTION, build_prompt
from holov_patches.api import prune_visual_tokens
from holov_patches.config import PruningConfig
from holov_patches.registry import get_entry, list_pruners

COLUMNS = ("method", "stage", "needs", "inputs_s", "pruner_s", "pruner_flops", "prefill_s", "prefill_ratio", "prefill_tokens")


def default_methods() -> List[str]:
    from llava.model.llava_arch import llava_methods

    return llava_methods() + list_pruners(stage="llm")


def _tower_has_text_side(model) -> bool:
    """True when ``mm_vision_tower`` is a whole CLIP checkpoint (text tower included)."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model.get_vision_tower().vision_tower_name), "model_type", "") == "clip"


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _check_methods(methods: Sequence[str]) -> List[str]:
    known = default_methods()
    bad = [m for m in methods if m not in known]
    if bad:
        raise ValueError(f"--methods {bad} are not run by our LLaVA path; accepted: {known}")
    return list(methods)


def measure_methods(model, prompt, methods: Sequence[str], keep: int, reps: int, progress: bool = True) -> List[Dict]:
    """One row per method (see the module docstring for the columns)."""
    if reps < 1:
        raise ValueError(f"reps={reps} must be >= 1")
    side = model.get_vision_tower().num_patches_per_side
    if not 1 <= keep < side * side:
        raise ValueError(f"keep={keep} must be in [1, {side * side - 1}] (the tower gives {side * side} tokens)")
    configs = {m: PruningConfig(method=m, keep=keep) for m in _check_methods(methods)}
    times: Dict[str, Dict[str, List[float]]] = {m: {"inputs": [], "pruner": [], "prefill": []} for m in configs}
    base: List[float] = []
    tokens: Dict[str, int] = {}

    def prefill(cfg: Optional[PruningConfig]):
        model.set_pruning(cfg)
        try:
            return model(input_ids=prompt.input_ids, images=prompt.images, image_sizes=prompt.image_sizes, use_cache=True,
                         pruning_text=QUESTION)
        finally:
            model.set_pruning(None)

    with torch.inference_mode():
        for rep in tqdm(range(reps + 1), desc="method costs", disable=not progress):  # rep 0 warms up
            unpruned = _seconds(lambda: prefill(None))
            if rep:
                base.append(unpruned)
            for name, cfg in configs.items():
                t = {"prefill": _seconds(lambda: tokens.__setitem__(name, prefill(cfg).past_key_values.get_seq_length()))}
                if get_entry(name).pre_llm:
                    holder = {}
                    t["inputs"] = _seconds(lambda: holder.update(x=model.pruner_inputs(prompt.images, cfg, pruning_text=QUESTION)))
                    feats, attn, extra = holder["x"]
                    t["pruner"] = _seconds(lambda: prune_visual_tokens(feats, attn, cfg, grid=(side, side), **extra))
                if rep:
                    for key, value in t.items():
                        times[name][key].append(value)
        flops = {name: _pruner_flops(model, prompt, cfg, side) for name, cfg in configs.items()}
    rows = []
    unpruned = statistics.median(base)
    for name in configs:
        entry = get_entry(name)
        med = {k: (statistics.median(v) if v else None) for k, v in times[name].items()}
        rows.append({"method": name, "stage": entry.stage, "needs": " ".join(entry.needs) or "-",
                     "inputs_s": med["inputs"], "pruner_s": med["pruner"], "pruner_flops": flops[name],
                     "prefill_s": med["prefill"], "prefill_ratio": med["prefill"] / unpruned,
                     "prefill_tokens": tokens[name]})
    rows.append({"method": "none (unpruned)", "stage": "-", "needs": "-", "inputs_s": None, "pruner_s": None,
                 "pruner_flops": None, "prefill_s": unpruned, "prefill_ratio": 1.0,
                 "prefill_tokens": prompt.text_tokens + side * side})
    return rows


def _pruner_flops(model, prompt, cfg: PruningConfig, side: int) -> Optional[int]:
    if not get_entry(cfg.method).pre_llm:
        return None
    from torch.utils.flop_counter import FlopCounterMode

    feats, attn, extra = model.pruner_inputs(prompt.images, cfg, pruning_text=QUESTION)
    with FlopCounterMode(display=False) as counter:
        prune_visual_tokens(feats, attn, cfg, grid=(side, side), **extra)
    return int(counter.get_total_flops())


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "s":
        return f"{value * 1e3:.2f}"
    if kind == "flops":
        return f"{value / 1e6:.2f}"
    if kind == "ratio":
        return f"{value:.3f}"
    return str(value)


def write_report(rows: List[Dict], out: Path, command: str, keep: int, model_command: str = "") -> List[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out.with_suffix(".csv"), out.with_suffix(".md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# What each method costs at K={keep}", "", "Generated by:", "", f"    {command}", ""]
    if model_command:
        lines += ["with the checkpoint made by:", "", f"    {model_command}", ""]
    lines += [
             "| method | stage | needs | inputs (ms) | pruner (ms) | pruner MFLOPs | prefill (ms) | prefill / unpruned | prefill tokens |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    kinds = ("", "", "", "s", "s", "flops", "s", "ratio", "")
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c], k) for c, k in zip(COLUMNS, kinds)) + " |")
    lines += ["", "Medians over the repetitions (after a warm-up); the methods are interleaved in each repetition. "
              "inputs = tower (+ projector for projector-stage methods) with exactly the method's declared inputs; "
              "in-LLM methods select inside the prefill, so they have no separate pruner time. DART keeps "
              "pivot_image + 8 * (K // 8) image tokens, as its released code. prefill tokens = the first layer's "
              "cache length: in-LLM methods prune after layer K, so their first layers hold every token."]
    md_path.write_text("\n".join(lines) + "\n")
    return [md_path, csv_path]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.method_costs", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="a LLaVA-1.5 checkpoint (e.g. one from `python -m llava.model.tiny`)")
    parser.add_argument("--keep", type=int, default=64, help="visual tokens kept (K)")
    parser.add_argument("--methods", nargs="+", default=None, help="methods to compare (default: all our LLaVA path runs)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    parser.add_argument("--out", default="results/method_costs", help="output prefix: writes <out>.md and <out>.csv")
    parser.add_argument("--model-command", default="", help="how --model-path was made, quoted in the report")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    args = parser.parse_args(argv)
    methods = _check_methods(args.methods) if args.methods else default_methods()
    if args.reps < 1:
        parser.error(f"--reps {args.reps} must be >= 1")

    from llava.model.builder import load_pretrained_model
    from llava.mm_utils import get_model_name_from_path
    from llava.utils import pick_device

    device = pick_device(args.device)
    tokenizer, model, processor, _ = load_pretrained_model(args.model_path, None, get_model_name_from_path(args.model_path),
                                                           device=device, pruning=PruningConfig(method="none"))  # off: each method is set explicitly
    prompt = build_prompt(model, tokenizer, processor)
    if not args.methods and not _tower_has_text_side(model):
        text_methods = [m for m in methods if "text_embeds" in get_entry(m).needs]
        methods = [m for m in methods if m not in text_methods]
        print(f"[method_costs] leaving out {text_methods}: the vision tower checkpoint "
              f"{model.get_vision_tower().vision_tower_name} has no CLIP text tower", file=sys.stderr)
    rows = measure_methods(model, prompt, methods, args.keep, args.reps, progress=not args.no_progress)
    command = "python -m benchmarks.method_costs " + " ".join(sys.argv[1:] if argv is None else argv)
    for path in write_report(rows, Path(args.out), command, args.keep, args.model_command):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
