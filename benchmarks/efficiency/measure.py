"""Measuring for the efficiency report: one loaded LLaVA-1.5 model, every K, counted and timed.

Why a module of its own: the numbers (analytic FLOPs per K from ``benchmarks.efficiency.flops``,
tower / pruner / prefill / decode times, peak prefill memory, KV-cache bytes, all as
ratios to the unpruned run of the same round) are produced here and only here, so the
report writers (``benchmarks.efficiency.report``) and the CLI
(``benchmarks.efficiency``, whose module docstring says what each number is and how
it is timed) only read a ``Report``. The prompt is fixed (one synthetic image, one
question, the ``vicuna_v1`` template) so that every run measures the same input.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from holov_patches.api import pre_llm_entry, prune_visual_tokens
from holov_patches.config import PruningConfig
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import build_prompt as build_conv_prompt
from llava.mm_utils import process_images, tokenizer_image_token
from benchmarks.efficiency.flops import LlavaShape, decode_flops_per_token, kv_cache_bytes, prefill_flops, shape_from_model
from holov_patches.registry import list_pruners

DEFAULT_KEEPS = (576, 192, 128, 64)
# About 35 LLaMA tokens; the tiny checkpoints' small tokenizer splits it into more.
QUESTION = ("Look at the picture carefully. Which shapes can you see, what colour is each of them, "
            "and where is each shape placed relative to the others?")
CONV_MODE = "vicuna_v1"


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
    prompt = build_conv_prompt(QUESTION, CONV_MODE, mm_use_im_start_end=getattr(model.config, "mm_use_im_start_end", False))
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
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
        self._features: Optional[Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]] = None

    def features(self, config: PruningConfig) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """What the method declares, as the model computes it (tokens at its stage, the [CLS]
        row or None, its other inputs); the same for every K of one method."""
        if self._features is None:
            self._features = self.model.pruner_inputs(self.prompt.images, config)
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
        """The tower's share: its features, plus exactly the inputs the method declares."""
        tower = self.model.get_vision_tower()
        if config is None:
            return tower(self.prompt.images)
        entry = pre_llm_entry(config)
        if entry.stage == "tower":
            return tower.tower_inputs(self.prompt.images, entry.needs, config.attention_dtype)
        return tower(self.prompt.images, with_cls_attn="cls_attn" in entry.needs)

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
            feats, cls_attn, inputs = self.features(config)
            times["pruner"] = self.timed(lambda: prune_visual_tokens(feats, cls_attn, config, grid=self.grid, **inputs))
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
            feats, cls_attn, inputs = self.features(config)
            with FlopCounterMode(display=False) as counter:
                prune_visual_tokens(feats, cls_attn, config, grid=self.grid, **inputs)
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
    if method not in pre_llm:
        raise ValueError(f"--method {method!r} is not a pre-LLM pruner; accepted: {pre_llm} "
                         "(in-LLM methods such as fastv change the LLM's cost in ways this FLOPs model does not count)")
    return method


def measure(model, tokenizer, prompt: Prompt, keeps: Sequence[int], method: str, reps: int, new_tokens: int,
            rounds: int, progress: bool = True) -> Report:
    """Count and time every K on ``model``; ``benchmarks.efficiency``'s docstring says what each number is."""
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
