"""Efficiency report: what visual-token pruning saves in LLaVA-1.5, counted and measured.

    python -m holov_patches.efficiency --model-path P [--device cuda] [--keeps 576 192 128 64]
        [--method holov] [--reps 3] [--new-tokens 8] [--rounds 1] [--out docs/efficiency]
        [--model-command "how P was made"] [--compare EARLIER.csv ...] [--threads N]
    python -m holov_patches.efficiency --random-7b --device cuda   # LLaVA-1.5-7B shape, random weights

``--random-7b`` writes a LLaVA-1.5-7B-shaped checkpoint (Vicuna-7B LLM, CLIP-L/336 tower,
random float16 weights, ~15 GB) to a temporary directory (or ``--random-dir``) and loads
it like any other; it refuses to run on CPU unless ``--allow-cpu-7b`` is given.

Why: HoloV (arXiv 2510.02912) and the pruners it is compared with are sold on a cheaper
prefill. This puts the analytic count (``holov_patches.flops``) beside what one model,
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
import csv
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from holov_patches.api import prune_visual_tokens
from holov_patches.config import PruningConfig
from holov_patches.flops import (LlavaShape, decode_flops_per_token, kv_cache_bytes, llava15_7b_shape, prefill_flops,
                                 shape_from_model)
from holov_patches.registry import get_entry, list_pruners

DEFAULT_KEEPS = (576, 192, 128, 64)
# About 35 LLaMA tokens; the tiny checkpoints' small tokenizer splits it into more.
QUESTION = ("Look at the picture carefully. Which shapes can you see, what colour is each of them, "
            "and where is each shape placed relative to the others?")
CONV_MODE = "vicuna_v1"
MIB = 2 ** 20
THIRD_PARTY = ("A third party measured LLaVA-1.5-7B at K=64 on an A6000 (shared/PUBLISHED_RESULTS.md): prefill "
               "8.89 vs 2.15 TFLOPs (4.1x fewer), pruner 2.77 ms, time to first token 150 ms vs 77 ms (1.95x).")


# --------------------------------------------------------------------------- inputs
@dataclass
class Prompt:
    input_ids: torch.Tensor  # [1, L] with one IMAGE_TOKEN_INDEX
    images: torch.Tensor  # [1, 3, S, S] in the model's dtype and device
    image_sizes: List[Tuple[int, int]]
    text_tokens: int  # L - 1: every token but the image placeholder


def make_image(width: int = 640, height: int = 480):
    """A fixed synthetic picture (three coloured shapes), so no file is needed."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (236, 233, 222))
    draw = ImageDraw.Draw(img)
    draw.rectangle((60, 70, 250, 250), fill=(200, 40, 40))
    draw.ellipse((330, 110, 570, 350), fill=(40, 90, 200))
    draw.polygon([(110, 430), (250, 290), (390, 430)], fill=(40, 160, 70))
    return img


def build_prompt(model, tokenizer, image_processor) -> Prompt:
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import get_conv_template
    from llava.mm_utils import process_images, tokenizer_image_token

    image_token = DEFAULT_IMAGE_TOKEN
    if getattr(model.config, "mm_use_im_start_end", False):
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    conv = get_conv_template(CONV_MODE)
    conv.append_message(conv.roles[0], image_token + "\n" + QUESTION)
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    image = make_image()
    pixels = process_images([image], image_processor, model.config)
    if not isinstance(pixels, torch.Tensor):
        raise ValueError("the efficiency report supports single-tile checkpoints (image_aspect_ratio 'pad' or none, "
                         f"LLaVA-1.5); this one has image_aspect_ratio={getattr(model.config, 'image_aspect_ratio', None)!r}")
    return Prompt(input_ids=ids.to(model.device), images=pixels.to(model.device, dtype=model.dtype),
                  image_sizes=[image.size], text_tokens=int(ids.shape[1]) - 1)


# --------------------------------------------------------------------------- one measurement
class Runner:
    """Timed and untimed calls on one loaded model; ``sync`` waits for the device."""

    def __init__(self, model, tokenizer, prompt: Prompt, new_tokens: int):
        self.model, self.tokenizer, self.prompt, self.new_tokens = model, tokenizer, prompt, new_tokens
        self.cuda = model.device.type == "cuda"
        tower = model.get_vision_tower()
        self.grid = (tower.num_patches_per_side, tower.num_patches_per_side)
        self._features: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def features(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The projected visual tokens [1, N, D] and [CLS] row [1, N] the pruner sees (the same for every K)."""
        if self._features is None:
            self._features = self.model.encode_images(self.prompt.images, with_cls_attn=True)
        return self._features

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.model.device)

    def timed(self, fn: Callable[[], object], cpu_times: Optional[List[float]] = None) -> float:
        """Wall seconds of ``fn``; with ``cpu_times``, also append the CPU seconds this process
        (all its threads) spent: about threads x wall when it ran undisturbed."""
        self.sync()
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        self.sync()
        wall = time.perf_counter() - start
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu_start)
        return wall

    def vision(self, config: Optional[PruningConfig]):
        return self.model.get_vision_tower()(self.prompt.images, with_cls_attn=config is not None)

    def prefill(self):
        p = self.prompt
        out = self.model(input_ids=p.input_ids, images=p.images, image_sizes=p.image_sizes, use_cache=True,
                         logits_to_keep=1)
        out.logits[:, -1].argmax(dim=-1)  # the first token
        return out

    def generate(self) -> float:
        """Generate exactly N tokens; returns the seconds per token after the first (step clock)."""
        p = self.prompt
        clock = _StepClock(self.sync)
        out = self.model.generate(p.input_ids, images=p.images, image_sizes=p.image_sizes,
                                  attention_mask=torch.ones_like(p.input_ids), do_sample=False, use_cache=True,
                                  min_new_tokens=self.new_tokens, max_new_tokens=self.new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([clock]))
        if out.shape[1] != self.new_tokens or len(clock.stamps) != self.new_tokens:
            raise RuntimeError(f"generate returned {out.shape[1]} tokens in {len(clock.stamps)} steps, "
                               f"asked for exactly {self.new_tokens}")
        return (clock.stamps[-1] - clock.stamps[0]) / (self.new_tokens - 1)

    def time_all(self, config: Optional[PruningConfig]) -> Dict[str, float]:
        """One repetition at one K: seconds for tower, pruner, prefill, whole generate and per decode step."""
        self.model.set_pruning(config)
        times = {"vision": self.timed(lambda: self.vision(config))}
        if config is None:
            times["pruner"] = 0.0
        else:
            feats, cls_attn = self.features()
            times["pruner"] = self.timed(lambda: prune_visual_tokens(feats, cls_attn, config, grid=self.grid))
        cpu: List[float] = []
        times["prefill"] = self.timed(self.prefill, cpu)
        times["prefill_cpu"] = cpu[0]
        per_token: List[float] = []
        times["generate"] = self.timed(lambda: per_token.append(self.generate()))
        times["decode"] = per_token[0]
        return times

    def untimed(self, config: Optional[PruningConfig]) -> Dict[str, Optional[int]]:
        """Untimed: the selection's FLOPs (counted on the real call), peak prefill memory beyond
        the starting allocation, and the size of the cache that prefill returns."""
        from torch.utils.flop_counter import FlopCounterMode

        self.model.set_pruning(config)
        selection = 0
        if config is not None:
            feats, cls_attn = self.features()
            with FlopCounterMode(display=False) as counter:
                prune_visual_tokens(feats, cls_attn, config, grid=self.grid)
            selection = counter.get_total_flops()
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.model.device)
            before = torch.cuda.memory_allocated(self.model.device)
            out = self.prefill()
            self.sync()
            total = torch.cuda.max_memory_allocated(self.model.device)
            extra = total - before
        else:
            out, extra = _cpu_peak_extra(self.prefill)
            total = None
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        kv_bytes, kv_tokens = _cache_size(cache)
        return {"selection_flops": selection, "peak_extra_bytes": extra, "peak_total_bytes": total,
                "kv_bytes_measured": kv_bytes, "tokens_measured": kv_tokens}


class _StepClock(StoppingCriteria):
    """A stopping criterion that never stops: it records the time after each generated token."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.stamps: List[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.sync()
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _cpu_peak_extra(fn: Callable[[], object]):
    """Run ``fn`` under torch.profiler with memory profiling; the peak of the running sum of
    the CPU tensor allocations and frees it records is the extra memory ``fn`` needed."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events: List[Tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    if not events:
        raise RuntimeError("torch.profiler recorded no CPU allocations; cannot measure peak memory on CPU")
    running = peak = 0
    for _, size in sorted(events):
        running += size
        peak = max(peak, running)
    return result, peak


def _cache_size(cache) -> Tuple[int, int]:
    """(bytes of all K and V tensors, cached sequence length) of a transformers cache."""
    if hasattr(cache, "layers"):
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    else:  # legacy tuple of (k, v) per layer
        pairs = [(k, v) for k, v in cache]
    size = sum(t.numel() * t.element_size() for pair in pairs for t in pair)
    lengths = {t.shape[-2] for pair in pairs for t in pair}
    if len(lengths) != 1:
        raise RuntimeError(f"cache layers hold different sequence lengths {sorted(lengths)}")
    return size, lengths.pop()


# --------------------------------------------------------------------------- the whole run
@dataclass
class Report:
    keeps: List[int]  # descending: the unpruned N first
    rows: List[Dict]  # one per (round, K)
    meta: Dict = field(default_factory=dict)


def check_keeps(keeps: Sequence[int], num_tokens: int) -> List[int]:
    """The K values, unpruned (= num_tokens) first then descending; the unpruned run is always included."""
    out = set()
    for k in keeps:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_tokens:
            raise ValueError(f"keep={k!r} must be an integer in [1, {num_tokens}] ({num_tokens} = no pruning)")
        out.add(k)
    out.add(num_tokens)
    return sorted(out, reverse=True)


def check_method(method: str) -> str:
    pre_llm = list_pruners(stage="pre_llm")
    if method not in pre_llm or get_entry(method).stage != "pre_llm":
        raise ValueError(f"--method {method!r} is not a pre-LLM pruner; accepted: {pre_llm} "
                         "(in-LLM methods such as fastv change the LLM's cost in ways this FLOPs model does not count)")
    return method


def measure(model, tokenizer, prompt: Prompt, keeps: Sequence[int], method: str, reps: int, new_tokens: int,
            rounds: int, progress: bool = True) -> Report:
    """Count and time every K on ``model``; see the module docstring for what each number is."""
    if reps < 1 or new_tokens < 2 or rounds < 1:
        raise ValueError(f"reps={reps} and rounds={rounds} must be >= 1 and new_tokens={new_tokens} >= 2")
    shape = shape_from_model(model)
    n = shape.vision.patches
    keeps = check_keeps(keeps, n)
    configs = {k: (None if k == n else PruningConfig(method=method, keep=k)) for k in keeps}
    runner = Runner(model, tokenizer, prompt, new_tokens)
    elem = next(model.parameters()).element_size()
    previous = model.get_pruning()
    rows: List[Dict] = []
    with torch.inference_mode():
        static = {}
        for k in keeps:
            measured = runner.untimed(configs[k])
            static[k] = _static_row(shape, prompt.text_tokens, k, n, new_tokens, elem, measured.pop("selection_flops"))
            static[k].update(measured)
        bar = tqdm(total=rounds * (reps + 1) * len(keeps), desc="efficiency", unit="run", disable=not progress)
        for rnd in range(1, rounds + 1):
            load_start = os.getloadavg()[0]
            samples: Dict[int, List[Dict[str, float]]] = {k: [] for k in keeps}
            for rep in range(reps + 1):  # rep 0 warms up every K and is discarded
                for k in keeps:
                    times = runner.time_all(configs[k])
                    if rep > 0:
                        samples[k].append(times)
                    bar.update(1)
            load_end = os.getloadavg()[0]
            for k in keeps:
                med = {name: statistics.median(s[name] for s in samples[k]) for name in samples[k][0]}
                row = dict(round=rnd, **static[k], load_start=load_start, load_end=load_end)
                row.update(vision_ms=1e3 * med["vision"], pruner_ms=1e3 * med["pruner"],
                           prefill_ms=1e3 * med["prefill"], prefill_cpu_ms=1e3 * med["prefill_cpu"],
                           generate_ms=1e3 * med["generate"],
                           decode_ms_per_token=1e3 * med["decode"],
                           decode_ms_per_token_sub=1e3 * (med["generate"] - med["prefill"]) / (new_tokens - 1))
                row["prefill_gflops_per_s"] = row["flops_total"] / med["prefill"] / 1e9
                rows.append(row)
        bar.close()
    model.set_pruning(previous)
    _add_ratios(rows, n)
    return Report(keeps=keeps, rows=rows, meta={"shape": shape, "text_tokens": prompt.text_tokens,
                                               "bytes_per_element": elem, "dtype": str(model.dtype).replace("torch.", ""),
                                               "device": str(model.device), "reps": reps, "new_tokens": new_tokens,
                                               "rounds": rounds, "method": method, "num_tokens": n})


def _static_row(shape: LlavaShape, text_tokens: int, k: int, n: int, new_tokens: int, elem: int, selection: int) -> Dict:
    parts = prefill_flops(shape, text_tokens, None if k == n else k, selection)
    tokens = parts["tokens"]
    decode = [decode_flops_per_token(shape.llm, tokens + step) for step in range(new_tokens - 1)]
    return {"K": k, "tokens": tokens, **{f"flops_{name}": parts[name] for name in ("vision", "projector", "pruner", "llm", "total")},
            "flops_selection": selection,
            "decode_flops_per_token": sum(decode) / len(decode),
            "kv_bytes_formula": kv_cache_bytes(shape.llm, tokens, elem)}


RATIOS = (  # (ratio column, source column)
    ("flops_total_ratio", "flops_total"), ("flops_llm_ratio", "flops_llm"), ("vision_time_ratio", "vision_ms"),
    ("prefill_time_ratio", "prefill_ms"), ("decode_time_ratio", "decode_ms_per_token"),
    ("decode_flops_ratio", "decode_flops_per_token"), ("peak_extra_ratio", "peak_extra_bytes"),
    ("peak_total_ratio", "peak_total_bytes"), ("kv_ratio", "kv_bytes_measured"),
)


def _add_ratios(rows: List[Dict], n: int) -> None:
    """Each row's metrics divided by the unpruned (K = n) row of the same round."""
    base = {row["round"]: row for row in rows if row["K"] == n}
    for row in rows:
        ref = base[row["round"]]
        for name, source in RATIOS:
            row[name] = None if row[source] is None or ref[source] is None else row[source] / ref[source]
        row["prefill_speedup"] = ref["prefill_ms"] / row["prefill_ms"]
        row["prefill_cpu_speedup"] = ref["prefill_cpu_ms"] / row["prefill_cpu_ms"]
        row["flops_speedup"] = ref["flops_total"] / row["flops_total"]


# --------------------------------------------------------------------------- random LLaVA-1.5-7B
def build_random_llava(out_dir: str, shape: LlavaShape, device: str = "cpu", dtype: torch.dtype = torch.float16) -> str:
    """A checkpoint of ``shape`` with random weights in the original LLaVA-1.5 layout.

    The tokenizer, the CLIP tower (random, ``shape.vision``) and the LLaVA config come from
    ``build_tiny_llava``; the language model is then rebuilt at full shape directly on
    ``device`` (fast random init on a GPU) in ``dtype`` and saved over the tiny one, so the
    report loads it through ``load_pretrained_model`` like any checkpoint."""
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.tiny import build_tiny_llava

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
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    saved.update(model_type="llava", architectures=["LlavaLlamaForCausalLM"])
    saved.pop("_name_or_path", None)
    with open(cfg_path, "w") as f:
        json.dump(saved, f, indent=2)
    return out_dir


# --------------------------------------------------------------------------- output
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def verdict(report: Report, k: int) -> List[Dict]:
    """Per round: measured prefill speedup at K against the FLOPs speedup, and the split that explains a gap."""
    n = report.meta["num_tokens"]
    out = []
    for rnd in range(1, report.meta["rounds"] + 1):
        rows = {r["K"]: r for r in report.rows if r["round"] == rnd}
        base, row = rows[n], rows[k]
        rest_base = base["prefill_ms"] - base["vision_ms"]
        rest_k = row["prefill_ms"] - row["vision_ms"] - row["pruner_ms"]
        flops_rest = (base["flops_projector"] + base["flops_llm"]) / (row["flops_projector"] + row["flops_llm"])
        out.append(dict(round=rnd, speedup=row["prefill_speedup"], flops_speedup=row["flops_speedup"],
                        cpu_speedup=row["prefill_cpu_speedup"],
                        gap=row["prefill_speedup"] / row["flops_speedup"] - 1.0,
                        rest_speedup=rest_base / rest_k, flops_rest_speedup=flops_rest,
                        fixed_share_base=(base["vision_ms"]) / base["prefill_ms"],
                        fixed_flops_share_base=base["flops_vision"] / base["flops_total"],
                        gflops_base=base["prefill_gflops_per_s"], gflops_k=row["prefill_gflops_per_s"],
                        load=(row["load_start"], row["load_end"]), decode_ms_base=base["decode_ms_per_token"],
                        **_fixed_cost_fit(list(rows.values()), n, k)))
    return out


def _fixed_cost_fit(rows: List[Dict], n: int, k: int) -> Dict[str, float]:
    """Least-squares line prefill_ms = fixed + FLOPs / rate over the K values of one round.

    Why: a cost that does not shrink with T (reading every weight once per forward,
    per-op dispatch, the splice) caps the speedup below the FLOPs ratio; the intercept
    estimates it. Needs at least two distinct K values."""
    xs = [r["flops_total"] / 1e9 for r in rows]  # GFLOPs
    ys = [r["prefill_ms"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var  # ms per GFLOP
    fixed = my - slope * mx
    by_k = {r["K"]: r for r in rows}
    predict = lambda r: fixed + slope * r["flops_total"] / 1e9  # noqa: E731
    return dict(fixed_ms=fixed, fit_gflops=1e3 / slope if slope > 0 else float("inf"),
                fit_max_err=max(abs(predict(r) / r["prefill_ms"] - 1) for r in rows),
                fit_speedup=predict(by_k[n]) / predict(by_k[k]), fixed_share_k=fixed / by_k[k]["prefill_ms"])


@dataclass
class OtherRun:
    """An earlier run of this report, read back from its CSV, for the run-to-run spread."""

    command: str  # from the run's Markdown when it sits beside the CSV, else the CSV path
    rows: List[Dict]


def read_other_run(csv_path: str) -> OtherRun:
    path = Path(csv_path)
    if not path.is_file():
        raise ValueError(f"--compare {csv_path!r}: no such file (give a .csv written by this report)")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    needed = {"round", "K", "prefill_speedup", "flops_speedup", "load_start", "load_end"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"--compare {csv_path!r} is not a CSV of this report (needs columns {sorted(needed)})")
    rows = [{k: (int(r[k]) if k in ("round", "K") else float(r[k])) for k in needed} for r in rows]
    command = str(path)
    md = path.with_suffix(".md")
    if md.is_file():
        lines = md.read_text().splitlines()
        command = next((line.strip() for line in lines if line.startswith("    python -m holov_patches.efficiency")), command)
    return OtherRun(command=command, rows=rows)


def write_report(report: Report, out: Path, command: str, machine: Dict[str, str],
                 others: Sequence[OtherRun] = ()) -> List[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [_write_csv(report, out.with_suffix(".csv")), _write_md(report, out.with_suffix(".md"), command, machine, others),
             _write_png(report, out.with_suffix(".png"))]
    return paths


def _write_csv(report: Report, path: Path) -> Path:
    columns = list(report.rows[0].keys())
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in report.rows:
            writer.writerow({c: ("" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]))
                             for c in columns})
    return path


def _write_md(report: Report, path: Path, command: str, machine: Dict[str, str], others: Sequence[OtherRun] = ()) -> Path:
    meta, shape = report.meta, report.meta["shape"]
    m, v = shape.llm, shape.vision
    n = meta["num_tokens"]
    first = [r for r in report.rows if r["round"] == 1]
    smallest = min(first, key=lambda r: r["K"])
    pruner_share = smallest["flops_pruner"] / smallest["flops_total"]
    lines = ["# Efficiency of visual-token pruning (HoloV-LLaVA)", "", "Generated by:", "", f"    {command}", ""]
    if machine.get("model_command"):
        lines += ["with the checkpoint made by:", "", f"    {machine['model_command']}", ""]
    lines += [
             f"Machine: {machine['summary']}. Model on `{meta['device']}` in {meta['dtype']}, method `{meta['method']}` "
             f"(K = {n} is the unpruned run). Times are medians of {meta['reps']} repetitions after one warm-up, "
             f"K values interleaved within each repetition; {meta['rounds']} round(s) in one process.", "",
             f"Model shape: LLM d={m.hidden}, {m.layers} layers, {m.heads} heads ({m.kv_heads} KV), head dim {m.head_dim}, "
             f"MLP {m.intermediate}, vocab {m.vocab}; CLIP tower C={v.hidden}, {v.layers} layers ({v.layers_run(False)} run, "
             f"select layer {v.select_layer}), MLP {v.intermediate}, {v.patches} patches; projector "
             + " -> ".join(str(d) for d in [shape.projector[0][0]] + [o for _, o in shape.projector]) + ". "
             f"Prompt: {CONV_MODE} template, one generated 640x480 image, {meta['text_tokens']} text tokens, "
             f"so T = {meta['text_tokens']} + K.", "",
             "FLOPs count a multiply-add as 2 and only matrix products (`holov_patches/flops.py`; norms, softmax, "
             "activations and rotary embeddings are left out): vision = patch embedding + the encoder layers that run; "
             f"projector over all {n} tokens (the pruner acts after it); pruner = the [CLS] attention row (analytic) + "
             "the selection's matrix products, counted with torch.utils.flop_counter on the real call; LLM = q/k/v/o "
             "(GQA-aware) + 4*T^2*d attention (the full square) + 3 MLP matmuls per layer, lm_head for the last position "
             f"only. The pruner is {pruner_share * 100:.2f}% of the K={min(report.keeps)} prefill FLOPs here.",
             "", "## Analytic prefill FLOPs (GFLOPs) and KV cache", ""]
    lines += _table(["K", "T", "vision", "projector", "pruner", "LLM", "total", "total / unpruned", "LLM / unpruned",
                     "KV formula (MiB)", "KV measured (MiB)", "KV match"],
                    [[str(r["K"]), str(r["tokens"]), *(f"{r[f'flops_{p}'] / 1e9:.2f}" for p in ("vision", "projector", "pruner", "llm", "total")),
                      _fmt(r["flops_total_ratio"]), _fmt(r["flops_llm_ratio"]), _mib(r["kv_bytes_formula"]),
                      _mib(r["kv_bytes_measured"]), "yes" if r["kv_bytes_formula"] == r["kv_bytes_measured"]
                      and r["tokens"] == r["tokens_measured"] else "NO"] for r in first])
    for rnd in range(1, meta["rounds"] + 1):
        rows = [r for r in report.rows if r["round"] == rnd]
        lines += ["", f"## Measured, round {rnd} (1-min load average {rows[0]['load_start']:.2f} at start, "
                      f"{rows[0]['load_end']:.2f} at end)", ""]
        lines += _table(["K", "vision (ms)", "pruner (ms)", "prefill / TTFT (ms)", "prefill CPU time (ms)", "decode (ms/token)",
                         "decode by subtraction (ms/token)", "prefill GFLOP/s", "peak extra mem (MiB)", "peak total mem (MiB)"],
                        [[str(r["K"]), _fmt(r["vision_ms"], 1), _fmt(r["pruner_ms"], 2), _fmt(r["prefill_ms"], 1),
                          _fmt(r["prefill_cpu_ms"], 1), _fmt(r["decode_ms_per_token"], 1), _fmt(r["decode_ms_per_token_sub"], 1),
                          _fmt(r["prefill_gflops_per_s"], 1), _mib(r["peak_extra_bytes"]),
                          _mib(r["peak_total_bytes"])] for r in rows])
        lines += ["", f"Ratios to the unpruned run of round {rnd}:", ""]
        lines += _table(["K", "FLOPs", "prefill time", "prefill speedup", "FLOPs speedup", "vision time", "decode time",
                         "decode FLOPs", "peak extra mem", "peak total mem", "KV bytes"],
                        [[str(r["K"]), _fmt(r["flops_total_ratio"]), _fmt(r["prefill_time_ratio"]), _fmt(r["prefill_speedup"], 2),
                          _fmt(r["flops_speedup"], 2), _fmt(r["vision_time_ratio"]), _fmt(r["decode_time_ratio"]),
                          _fmt(r["decode_flops_ratio"]), _fmt(r["peak_extra_ratio"]), _fmt(r["peak_total_ratio"]),
                          _fmt(r["kv_ratio"])] for r in rows])
    lines += _verdict_lines(report, others)
    lines += _seven_b_lines(report)
    lines += ["", f"Notes: decode time = time per generated token after the first, from clock stamps taken after "
              f"every token inside `generate` (N = {meta['new_tokens']} tokens, so N - 1 steps; it includes `generate`'s "
              "per-step Python overhead); 'by subtraction' = (whole generate - prefill) / (N - 1). Prefill CPU time = "
              "CPU seconds of this process (all threads) during the prefill: when it is about threads x wall time, the "
              "prefill was not waiting for other processes (it does not protect against shared caches and memory "
              "bandwidth). Peak extra memory = the prefill's "
              "allocations beyond what existed before it (activations + KV cache), from torch.cuda.max_memory_allocated "
              "on CUDA and from torch.profiler's recorded CPU allocations on CPU (untimed pass); total peak memory "
              "(weights included) exists only on CUDA. Vision time at K < 576 includes the [CLS] attention row.", ""]
    path.write_text("\n".join(lines))
    return path


def _verdict_lines(report: Report, others: Sequence[OtherRun] = ()) -> List[str]:
    target = 64 if 64 in report.keeps else min(report.keeps)
    lines = ["", f"## Prefill speedup at K={target} against the FLOPs ratio", ""]
    verdicts = verdict(report, target)
    gaps = [v["gap"] for v in verdicts]
    for v in verdicts:
        within = abs(v["gap"]) <= 0.10
        lines.append(
            f"- Round {v['round']}: measured prefill speedup {v['speedup']:.2f}x, FLOPs speedup {v['flops_speedup']:.2f}x: "
            f"{'within' if within else 'NOT within'} 10% ({v['gap'] * 100:+.1f}%); in process CPU time "
            f"{v['cpu_speedup']:.2f}x. Without the vision tower and pruner (projector + splice + LLM only): "
            f"{v['rest_speedup']:.2f}x measured vs {v['flops_rest_speedup']:.2f}x in FLOPs. "
            f"The tower is {v['fixed_share_base'] * 100:.1f}% of the unpruned prefill time and "
            f"{v['fixed_flops_share_base'] * 100:.2f}% of its FLOPs; achieved {v['gflops_base']:.1f} GFLOP/s unpruned vs "
            f"{v['gflops_k']:.1f} at K={target} (load average {v['load'][0]:.2f} -> {v['load'][1]:.2f}). "
            f"A straight line through the {len(report.keeps)} K values, prefill time = fixed + FLOPs / rate, gives "
            f"fixed = {v['fixed_ms']:.1f} ms ({v['fixed_share_k'] * 100:.0f}% of the K={target} prefill) and rate = "
            f"{v['fit_gflops']:.1f} GFLOP/s (fitted times within {v['fit_max_err'] * 100:.1f}% of the measured ones); "
            f"with that fixed cost the expected speedup is {v['fit_speedup']:.2f}x. For scale, one decode step (a "
            f"forward over a single token, which still reads every weight once) takes {v['decode_ms_base']:.1f} ms.")
    for other in others:
        lines += ["", f"Another run of this report (`{other.command}`):", ""]
        for row in sorted((r for r in other.rows if r["K"] == target), key=lambda r: r["round"]):
            gap = row["prefill_speedup"] / row["flops_speedup"] - 1.0
            gaps.append(gap)
            lines.append(f"- Round {row['round']}: prefill speedup {row['prefill_speedup']:.2f}x vs FLOPs "
                         f"{row['flops_speedup']:.2f}x ({gap * 100:+.1f}%; load average {row['load_start']:.2f} -> "
                         f"{row['load_end']:.2f}).")
    if len(gaps) > 1:
        inside = sum(abs(g) <= 0.10 for g in gaps)
        lines += ["", f"Over all {len(gaps)} rounds: gap {min(gaps) * 100:+.1f}% to {max(gaps) * 100:+.1f}% "
                      f"(median {statistics.median(gaps) * 100:+.1f}%), within 10% in {inside} of {len(gaps)}."]
    return lines


def _seven_b_lines(report: Report) -> List[str]:
    """The same count at LLaVA-1.5-7B shape, for this run's prompt and for a 64-token one.

    The selection FLOPs of this run are scaled by the token width (they are matrix
    products over D-dimensional projected tokens)."""
    shape, run_shape = llava15_7b_shape(), report.meta["shape"]
    n, width = shape.vision.patches, shape.projector[-1][1] / run_shape.projector[-1][1]
    selection = {r["K"]: round(r["flops_selection"] * width) for r in report.rows if r["round"] == 1}
    header, rows = ["K"], []
    prompts = (report.meta["text_tokens"], 64)
    for text in prompts:
        header += [f"T ({text} text)", "prefill TFLOPs", "ratio", "KV cache (MiB)"]
    for k in report.keeps:
        row = [str(k)]
        for text in prompts:
            base = prefill_flops(shape, text, None)["total"]
            parts = prefill_flops(shape, text, None if k == n else k, selection[k])
            row += [str(parts["tokens"]), f"{parts['total'] / 1e12:.2f}", _fmt(parts["total"] / base),
                    _mib(kv_cache_bytes(shape.llm, parts["tokens"], 2))]
        rows.append(row)
    return ["", f"## Analytic count at LLaVA-1.5-7B shape (this prompt's {prompts[0]} text tokens and a 64-token prompt; "
                "float16 KV cache)", ""] + _table(header, rows) + ["", THIRD_PARTY]


def _write_png(report: Report, path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global figure or backend state

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    series = [("flops_total_ratio", "prefill FLOPs", "k-", 1), ("kv_ratio", "KV-cache bytes", "C2:", 1),
              ("peak_extra_ratio", "peak extra memory", "C3-.", 1), ("decode_flops_ratio", "decode FLOPs / token", "C4:", 1)]
    for rnd in range(1, report.meta["rounds"] + 1):
        series += [("prefill_time_ratio", f"prefill time (round {rnd})", "C0-o", rnd),
                   ("decode_time_ratio", f"decode time / token (round {rnd})", "C1--s", rnd)]
    for column, label, style, rnd in series:
        rows = sorted((r for r in report.rows if r["round"] == rnd and r[column] is not None), key=lambda r: r["K"])
        if rows:
            ax.plot([r["K"] for r in rows], [r[column] for r in rows], style, label=label, alpha=1.0 if rnd == 1 else 0.6)
    ax.set_xlabel("visual tokens kept K")
    ax.set_ylabel("ratio to unpruned (K = %d)" % report.meta["num_tokens"])
    ax.set_xticks(report.keeps)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Pruning with {report.meta['method']} on {report.meta['device']}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


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
    p.add_argument("--out", default="docs/efficiency", help="output prefix: writes <out>.md, <out>.csv, <out>.png")
    p.add_argument("--model-command", default=None,
                   help="how --model-path was made (e.g. the `python -m llava.model.tiny ...` line), quoted in the report")
    p.add_argument("--compare", nargs="+", default=[], metavar="CSV",
                   help="earlier runs' CSVs (same report): their K=64 speedups are listed and summarised with this run's")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    return p.parse_args(argv)


def _load(path: str, device: str):
    from llava.model.builder import load_pretrained_model
    from llava.mm_utils import get_model_name_from_path

    tokenizer, model, image_processor, _ = load_pretrained_model(path, None, get_model_name_from_path(path), device=device,
                                                                 pruning=None)
    return tokenizer, model, image_processor


def run(args: argparse.Namespace, command: str) -> Report:
    from llava.utils import pick_device

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
    report = run(args, "python -m holov_patches.efficiency " + shlex.join(argv))
    for v in verdict(report, 64 if 64 in report.keeps else min(report.keeps)):
        print(f"round {v['round']}: prefill speedup {v['speedup']:.2f}x vs FLOPs {v['flops_speedup']:.2f}x ({v['gap'] * 100:+.1f}%)")
    print("wrote " + ", ".join(str(p) for p in report.meta["paths"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
