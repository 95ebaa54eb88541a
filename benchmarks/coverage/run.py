"""Coverage report: how much of a synthetic image each pre-LLM pruner keeps, without weights.

Run ``python -m benchmarks.coverage [--out results/coverage] [--keeps 192 128 64 32 16]
[--seeds N]``. For every registered pre-LLM pruner (HoloV in both modes), every budget K
and every seed, it builds a synthetic map (``benchmarks.coverage.synthetic_maps``), prunes it
through ``prune_visual_tokens`` with a ``PruningConfig`` (the same path the models use)
and measures:

- object coverage: share of the map's objects (the salient one included) with at least
  one kept position. A merged token counts at its ``kept_index`` only;
- dropped-to-kept distance: mean over dropped tokens of the cosine distance from the
  token to its nearest kept token (kept vectors as returned, so VisionZip's merged
  tokens count as the averages they are; zero pads are ignored);
- spatial gap: mean over all grid cells of the Euclidean grid distance (in patches) to
  the nearest kept position; 0 when every cell is kept, large when the kept tokens
  huddle in one place;
- salient share: fraction of the kept positions that lie on the salient object.

It writes ``<out>.md`` (tables), ``<out>.csv`` (means and standard deviations over seeds)
and ``<out>.png`` (one panel per metric, x = K). A method whose pruner raises
``NotImplementedError`` (a placeholder) is left out and named in the Markdown.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from holov_patches.api import prune_visual_tokens
from holov_patches.config import PruningConfig
from holov_patches.registry import get_entry, list_pruners
from benchmarks.coverage.synthetic_maps import SALIENT, MapSpec, SyntheticMap, make_map

DEFAULT_KEEPS = (192, 128, 64, 32, 16)
DEFAULT_SEEDS = 50
SPECS = {"default": MapSpec, "small": MapSpec.small}


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    reading: str  # how to read it: "higher is better", "lower is better" or what the value means


METRICS = (
    Metric("object_coverage", "Object coverage (share of objects with >= 1 kept token)", "higher is better"),
    Metric("dropped_distance", "Dropped-to-kept cosine distance (mean over dropped tokens)", "lower is better"),
    Metric("spatial_gap", "Spatial gap (mean grid distance of a cell to the nearest kept token, patches)",
           "lower is better"),
    Metric("salient_share", "Salient share (fraction of kept tokens on the salient object)",
           "1 = the whole budget on one object"),
)

# run(tokens [1, N, D], cls_attn [1, N], keep, seed, grid) -> (kept_tokens [1, K, D], kept_index [1, K])
Runner = Callable[[torch.Tensor, torch.Tensor, int, int, Tuple[int, int]], Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Variant:
    """One line of the report: a label and how to prune one map with budget K."""

    label: str
    run: Runner


def stand_in_inputs(needs, tokens: torch.Tensor, cls_attn: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A synthetic map has tokens and a [CLS] row only; a method that declares more gets
    stand-ins: one attention head (the row itself), the tokens as their own keys, their
    mean as the [CLS] token, the tokens as their own CLIP image embeddings and their mean as
    the text embedding. Said in the report."""
    made = {"cls_attn_heads": lambda: cls_attn[:, None], "keys": lambda: tokens, "cls_token": lambda: tokens.mean(dim=1),
            "image_embeds": lambda: tokens, "text_embeds": lambda: tokens.mean(dim=1)}
    missing = [n for n in needs if n != "cls_attn" and n not in made]
    if missing:
        raise ValueError(f"the coverage report has no stand-in for the inputs {missing}")
    return {n: made[n]() for n in needs if n != "cls_attn"}


def _run_config(tokens, cls_attn, keep, seed, grid, *, method: str, config_kwargs: Dict, seeded: bool):
    options = {"seed": seed} if seeded else {}
    config = PruningConfig(method=method, keep=keep, options=options, **config_kwargs)
    needs = get_entry(method).needs
    return prune_visual_tokens(tokens, cls_attn if "cls_attn" in needs else None, config, grid=grid,
                               **stand_in_inputs(needs, tokens, cls_attn))


# HoloV settings in the report: both modes, plus the improved mode with one option changed
# at a time, so each named departure from the released code shows what it buys.
HOLOV_VARIANTS = {
    "holov-faithful": {"mode": "faithful"},
    "holov-improved": {"mode": "improved"},
    "holov-improved-rank_by_attention": {"mode": "improved", "rank_by": "attention"},
    "holov-improved-diversity_scale_image": {"mode": "improved", "diversity_scale": "image"},
}


def default_variants() -> List[Variant]:
    """Every registered pre-LLM pruner through ``prune_visual_tokens``; HoloV in each of
    HOLOV_VARIANTS; random seeded per map."""
    variants = []
    for name in list_pruners(stage="pre_llm"):
        settings = HOLOV_VARIANTS if name == "holov" else {name: {}}
        for label, kwargs in settings.items():
            variants.append(Variant(label, partial(_run_config, method=name, config_kwargs=kwargs, seeded=name == "random")))
    return variants


def map_metrics(smap: SyntheticMap, kept_tokens: torch.Tensor, kept_index: torch.Tensor) -> Dict[str, float]:
    """The report's metrics for one pruned map (kept_tokens [1, K, D], kept_index [1, K]; -1 = zero pad)."""
    valid = kept_index[0] >= 0
    index = kept_index[0][valid]  # [K']
    kept = kept_tokens[0][valid].float()  # [K', D]
    num = smap.object_id.numel()
    if index.numel() == 0:
        raise ValueError("the pruner kept no real token")

    kept_ids = smap.object_id[index]
    covered = torch.unique(kept_ids[kept_ids >= 0]).numel()

    dropped = torch.ones(num, dtype=torch.bool)
    dropped[index] = False
    if bool(dropped.any()):
        dropped_unit = F.normalize(smap.tokens[0][dropped].float(), dim=-1)  # [N - K', D]
        kept_unit = F.normalize(kept, dim=-1, eps=1e-6)  # [K', D]
        dropped_distance = (1.0 - dropped_unit @ kept_unit.T).amin(dim=1).mean().item()
    else:
        dropped_distance = 0.0

    rows, cols = smap.grid
    cells = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), dim=-1)
    cells = cells.reshape(num, 2).float()  # [N, 2] (row, col) of every raster position
    spatial_gap = torch.cdist(cells, cells[index]).amin(dim=1).mean().item()

    return {
        "object_coverage": covered / smap.num_objects,
        "dropped_distance": dropped_distance,
        "spatial_gap": spatial_gap,
        "salient_share": (kept_ids == SALIENT).float().mean().item(),
    }


@dataclass
class CoverageResult:
    keeps: Tuple[int, ...]
    seeds: int
    spec: MapSpec
    labels: List[str]  # the variants that ran, in report order
    mean: Dict[Tuple[str, int, str], float] = field(default_factory=dict)  # (label, K, metric) -> mean over seeds
    std: Dict[Tuple[str, int, str], float] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)  # label -> why it was left out


def _check_positive_ints(name: str, values: Sequence[int]) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name}={values!r} must be a non-empty list of integers >= 1")


def run_coverage(keeps: Sequence[int] = DEFAULT_KEEPS, seeds: int = DEFAULT_SEEDS, spec: MapSpec = MapSpec(),
                 variants: Optional[Sequence[Variant]] = None, progress: bool = True) -> CoverageResult:
    """Prune ``seeds`` maps (seeds 0..seeds-1) with every variant and budget; average the metrics over maps."""
    _check_positive_ints("keeps", list(keeps))
    _check_positive_ints("seeds", [seeds])
    variants = list(default_variants() if variants is None else variants)
    samples: Dict[Tuple[str, int, str], List[float]] = {}
    skipped: Dict[str, str] = {}
    for seed in tqdm(range(seeds), desc="coverage maps", unit="map", disable=not progress):
        smap = make_map(seed, spec)
        for variant in variants:
            if variant.label in skipped:
                continue
            for keep in keeps:
                try:
                    kept_tokens, kept_index = variant.run(smap.tokens, smap.cls_attn, keep, seed, smap.grid)
                except NotImplementedError as err:  # a placeholder pruner: report it, do not fake numbers
                    skipped[variant.label] = f"NotImplementedError: {err}"
                    break
                for key, value in map_metrics(smap, kept_tokens, kept_index).items():
                    samples.setdefault((variant.label, keep, key), []).append(value)

    labels = [v.label for v in variants if v.label not in skipped]
    result = CoverageResult(keeps=tuple(keeps), seeds=seeds, spec=spec, labels=labels, skipped=skipped)
    for (label, keep, key), values in samples.items():
        if label in skipped:
            continue
        stats = torch.tensor(values, dtype=torch.float64)
        result.mean[(label, keep, key)] = stats.mean().item()
        result.std[(label, keep, key)] = stats.std(correction=0).item()
    return result


def _markdown(result: CoverageResult, command: str) -> str:
    spec = result.spec
    lines = [
        "# Coverage proxy for visual-token pruners",
        "",
        "Generated by:",
        "",
        f"    {command}",
        "",
        "A weight-free proxy (see `benchmarks/coverage/run.py` and `benchmarks/coverage/synthetic_maps.py`): "
        f"{result.seeds} synthetic {spec.rows} x {spec.cols} token maps (D = {spec.dim}) with a smoothly textured "
        f"background, a {spec.uniform_size[0]} x {spec.uniform_size[1]} region of near-duplicate tokens, "
        f"{len(spec.object_sizes)} objects of sides {', '.join(map(str, spec.object_sizes))} patches and one "
        f"{spec.salient_size} x {spec.salient_size} salient object, each object with its own feature direction. "
        f"[CLS] attention levels: salient {spec.salient_attn:g}, objects {spec.object_attn:g}, background "
        f"{spec.background_attn:g}, times log-normal noise (sigma {spec.attn_noise:g}), normalised per map. "
        "Every method runs through `prune_visual_tokens` with a `PruningConfig`; random uses the map's seed. "
        "Methods that need more than tokens and the [CLS] row (visionzip, cdpruner) get stand-ins for what a "
        "map lacks: the [CLS] row as one head, the tokens as their own keys and as their own CLIP image "
        "embeddings, their mean as the [CLS] token and as the text embedding. "
        "Values are means over maps (standard deviations in the CSV).",
        "",
        "Metrics: object coverage = share of objects (salient included) with at least one kept position "
        "(`visionzip_projected` merges into its targets and counts there; `visionzip`'s [CLS] and merged rows have no single position, `kept_index` -2, and are not counted); dropped-to-kept distance = mean cosine distance "
        "from each dropped token to its nearest kept vector; spatial gap = mean Euclidean grid distance "
        "(patches) from every cell to the nearest kept position; salient share = fraction of kept positions "
        "on the salient object. K >= N keeps every token.",
        "",
        f"By construction, with K <= {spec.salient_size ** 2} (the salient object's size) a pure [CLS]-attention "
        f"ranking keeps only salient tokens: object coverage 1/{spec.num_objects} = {1 / spec.num_objects:.3f} and "
        f"salient share 1. A content-blind random choice has salient share about "
        f"{spec.salient_size ** 2 / spec.num_tokens:.3f}. This is a proxy for what the pruners keep, not for "
        "benchmark accuracy: real [CLS] attention and real features are less clean.",
        "",
    ]
    if result.skipped:
        lines += ["Not in the tables (their pruner raised NotImplementedError, i.e. is still a placeholder; "
                  "rerun this command once it lands):", ""]
        lines += [f"- `{label}`: {reason}" for label, reason in sorted(result.skipped.items())]
        lines.append("")
    for metric in METRICS:
        lines += [f"## {metric.title}; {metric.reading}", ""]
        lines.append("| method | " + " | ".join(f"K={k}" for k in result.keeps) + " |")
        lines.append("|---|" + "---:|" * len(result.keeps))
        for label in result.labels:
            cells = [f"{result.mean[(label, k, metric.key)]:.3f}" for k in result.keeps]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_csv(result: CoverageResult, path: Path) -> None:
    header = ["method", "keep", "seeds"] + [f"{m.key}_{s}" for m in METRICS for s in ("mean", "std")]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for label in result.labels:
            for keep in result.keeps:
                stats = [f"{d[(label, keep, m.key)]:.6f}" for m in METRICS for d in (result.mean, result.std)]
                writer.writerow([label, keep, result.seeds] + stats)


def _write_plot(result: CoverageResult, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global figure or backend state

    cols = 2
    rows = -(-len(METRICS) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    keeps = sorted(result.keeps)
    for ax in axes[len(METRICS):]:
        ax.set_visible(False)
    for ax, metric in zip(axes, METRICS):
        for label in result.labels:
            ax.plot(keeps, [result.mean[(label, k, metric.key)] for k in keeps], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(keeps, [str(k) for k in keeps])
        ax.minorticks_off()
        ax.set_xlabel("K (kept tokens)")
        ax.set_title(f"{metric.key.replace('_', ' ')} ({metric.reading})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Synthetic {result.spec.rows}x{result.spec.cols} maps, {result.seeds} seeds", fontsize=11)
    fig.savefig(path, dpi=110)


def write_report(result: CoverageResult, out: Path, command: str) -> Tuple[Path, Path, Path]:
    """Write ``<out>.md``, ``<out>.csv`` and ``<out>.png``; returns their paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, csv_path, png = (out.with_name(out.name + ext) for ext in (".md", ".csv", ".png"))
    md.write_text(_markdown(result, command))
    _write_csv(result, csv_path)
    _write_plot(result, png)
    return md, csv_path, png


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/coverage", help="output path prefix: writes <out>.md, <out>.csv, <out>.png")
    parser.add_argument("--keeps", type=int, nargs="+", default=list(DEFAULT_KEEPS), help="budgets K to evaluate")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="number of synthetic maps (seeds 0..N-1)")
    parser.add_argument("--spec", choices=sorted(SPECS), default="default",
                        help="map family: 'default' (24x24, D=64) or 'small' (12x12, D=32, for quick checks)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    result = run_coverage(args.keeps, args.seeds, SPECS[args.spec](), progress=not args.no_progress)
    command = "python -m benchmarks.coverage " + shlex.join(argv)
    paths = write_report(result, Path(args.out), command.strip())
    print("wrote " + ", ".join(str(p) for p in paths))
    if result.skipped:
        print("left out (placeholder pruners): " + ", ".join(sorted(result.skipped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
