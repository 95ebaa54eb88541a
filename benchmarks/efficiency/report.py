"""Writing the efficiency report: Markdown, CSV and PNG from one measured ``Report``.

Why a module of its own: the measuring (``benchmarks.efficiency.measure``) is slow and
needs a model; everything here depends only on its ``Report`` (and on earlier runs' CSVs
for ``--compare``), so the wording, tables, verdict (measured prefill speedup
against the FLOPs speedup, with a fixed-cost line fit that explains a gap) and plot can
be read and changed without touching a model.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from benchmarks.efficiency.measure import CONV_MODE, Report
from benchmarks.efficiency.flops import kv_cache_bytes, llava15_7b_shape, prefill_flops

MIB = 2 ** 20
THIRD_PARTY = ("A third party measured LLaVA-1.5-7B at K=64 on an A6000 (a measurement quoted without a primary source; for orientation only): prefill "
               "8.89 vs 2.15 TFLOPs (4.1x fewer), pruner 2.77 ms, time to first token 150 ms vs 77 ms (1.95x).")


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _by_subtraction(value) -> str:
    """(whole generate - prefill) / (N - 1) differences two noisy times; below 0 it says only
    that the noise won, so the cell says so instead of printing a negative time."""
    if value is not None and value < 0:
        return "n/a (noise > signal)"
    return _fmt(value, 1)


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
        command = next((line.strip() for line in lines if line.startswith("    python -m benchmarks.efficiency")), command)
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
                          _fmt(r["prefill_cpu_ms"], 1), _fmt(r["decode_ms_per_token"], 1), _by_subtraction(r["decode_ms_per_token_sub"]),
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
