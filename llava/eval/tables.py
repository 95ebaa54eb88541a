"""Paper-style tables of a token-budget sweep: one row per (method, K), one column per
benchmark, and the average as % of the unpruned model, as in HoloV (Zou et al., NeurIPS
2025) Table 1 and the VisionZip / SparseVLM / DART tables it compares with.

Reads ``RESULTS_DIR/<label>_k<K>/<bench>/result.json`` as written by the scorers through
``scripts/v1_5/eval/<bench>.sh`` (``{"benchmark", "headline", "metrics", "n"}``), where
``RESULTS_DIR`` is ``results/<model name>``. The row ``unpruned_k<N>`` is the reference: a
row's "Avg (% of unpruned)" is the mean, over the benchmarks that row and the reference both
have (and where the reference is not 0), of ``100 * score / reference score``. Benchmarks
left out of a row's average are listed under the table. ``--published`` adds the published
LLaVA-1.5-7B rows (``llava/eval/data/published_llava15_7b.csv``, each with its source),
averaged against the published unpruned row the same way.

    python -m llava.eval.tables results/llava-v1.5-7b [--out results/llava-v1.5-7b/table]
        [--published] [--published-file F.csv]

writes ``PREFIX.md``, ``PREFIX.csv`` and ``PREFIX.png`` (score vs K, one panel per benchmark)
and prints the Markdown. ``python -m llava.eval.tables --published`` (no results directory)
prints the published table alone, and writes the three files only when ``--out`` is given.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

# (results folder = script name, column header, the ``benchmark`` its result.json names)
BENCHMARKS: Tuple[Tuple[str, str, str], ...] = (
    ("gqa", "GQA", "gqa"),
    ("mmbench", "MMB", "mmbench"),
    ("mmbench_cn", "MMB-CN", "mmbench_cn"),
    ("mme", "MME", "mme"),
    ("pope", "POPE", "pope"),
    ("sqa", "SQA", "scienceqa"),
    ("vqav2", "VQAv2", "vqav2"),
    ("textvqa", "TextVQA", "textvqa"),
    ("vizwiz", "VizWiz", "vizwiz"),
    ("seed", "SEED", "seed"),
)
COLUMN = {folder: header for folder, header, _ in BENCHMARKS}
RESULT_NAME = {folder: name for folder, _, name in BENCHMARKS}
CONVENTION = ("MME = perception + cognition (as pruning papers report it; LLaVA's model zoo gives perception "
              "only); POPE = mean F1 over adversarial / popular / random; SQA = accuracy on the test questions "
              "with an image (SQA-IMG); MMB / MMB-CN = CircularEval accuracy on dev; GQA, VQAv2, TextVQA, "
              "VizWiz, SEED = accuracy in %. Avg = mean over the benchmarks present of score / unpruned score "
              "x 100.")
UNPRUNED = "unpruned"
AVG = "Avg (% of unpruned)"
REFERENCE_CONVENTION = "pruning-papers"
PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "published_llava15_7b.csv")
RUN_DIR = re.compile(r"^(?P<label>.+)_k(?P<keep>[0-9]+)$")
RESULT_KEYS = ("benchmark", "headline", "metrics", "n")


@dataclass
class Row:
    """Scores of one (method, K): ``scores`` maps a column header (GQA, MME, ...) to the headline."""

    method: str
    keep: int
    scores: Dict[str, float]
    source: str = "ours"
    convention: str = REFERENCE_CONVENTION
    avg: Optional[float] = None
    avg_over: List[str] = field(default_factory=list)
    left_out: Dict[str, str] = field(default_factory=dict)  # column -> why it is not in the average
    no_avg: Optional[str] = None  # why the whole row has no average
    lenient: Dict[str, float] = field(default_factory=dict)  # column -> the --parser lenient headline, when scored so

    @property
    def is_unpruned(self) -> bool:
        return self.method == UNPRUNED


# ---------------------------------------------------------------- reading
def read_result(path: str, folder: str) -> Tuple[float, Optional[float]]:
    """(official headline, lenient headline or None) of one scorer result file, checked against
    the folder it sits in. The table always prints the official figure; a lenient one (from
    ``--parser lenient``) is named in a note beside it, never put in its place."""
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"{path}: result lacks {missing}; expected keys {list(RESULT_KEYS)}")
    expected = RESULT_NAME.get(folder, folder)
    if result["benchmark"] != expected:
        raise ValueError(f"{path}: benchmark {result['benchmark']!r} in the folder of {folder!r} (expected {expected!r})")
    headline = result["headline"]
    if isinstance(headline, bool) or not isinstance(headline, (int, float)) or not math.isfinite(headline):
        raise ValueError(f"{path}: headline {headline!r} is not a finite number")
    lenient = result.get("lenient", {}).get("headline") if result.get("parser") == "lenient" else None
    return float(headline), (float(lenient) if lenient is not None else None)


def load_results(results_dir: str) -> List[Row]:
    """One Row per ``<label>_k<K>`` folder that holds at least one scored benchmark."""
    if not os.path.isdir(results_dir):
        raise ValueError(f"results directory {results_dir!r} does not exist")
    rows = []
    for name in sorted(os.listdir(results_dir)):
        run_dir = os.path.join(results_dir, name)
        m = RUN_DIR.match(name)
        if not m or not os.path.isdir(run_dir):
            continue
        scores, lenient = {}, {}
        for folder in sorted(os.listdir(run_dir)):
            path = os.path.join(run_dir, folder, "result.json")
            if os.path.isfile(path):
                column = COLUMN.get(folder, folder)
                scores[column], lenient_score = read_result(path, folder)
                if lenient_score is not None:
                    lenient[column] = lenient_score
        if scores:
            order = {h: i for i, (_, h, _) in enumerate(BENCHMARKS)}
            scores = dict(sorted(scores.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
            rows.append(Row(m.group("label"), int(m.group("keep")), scores, lenient=lenient))
        else:
            print(f"[tables] {run_dir}: no scored benchmark yet (no */result.json)", file=sys.stderr)
    if sum(r.is_unpruned for r in rows) > 1:
        raise ValueError(f"{results_dir} has several unpruned runs {[f'{r.method}_k{r.keep}' for r in rows if r.is_unpruned]}; "
                         "keep one reference")
    return rows


def load_published(path: str = PUBLISHED_FILE) -> List[Row]:
    """Published rows (method, K, one column per benchmark, convention, source); empty cells = not reported."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        needed = {"method", "K", "convention", "source"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs columns {sorted(needed)}, has {reader.fieldnames}")
        bench_cols = [c for c in reader.fieldnames if c not in needed]
        rows = []
        for lineno, rec in enumerate(reader, 2):
            try:
                scores = {c: float(rec[c]) for c in bench_cols if rec[c] and rec[c].strip()}
                keep = int(rec["K"])
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from err
            rows.append(Row(rec["method"], keep, scores, source=rec["source"], convention=rec["convention"]))
    return rows


# ---------------------------------------------------------------- averages
def find_reference(rows: Sequence[Row]) -> Optional[Row]:
    """The unpruned row in the reference convention (None when the run set has none)."""
    refs = [r for r in rows if r.is_unpruned and r.convention == REFERENCE_CONVENTION]
    if len(refs) > 1:
        raise ValueError(f"several unpruned reference rows: {[(r.method, r.keep, r.source) for r in refs]}")
    return refs[0] if refs else None


def percent_of_reference(row: Row, reference: Optional[Row]) -> Row:
    """Fill ``row.avg`` (mean of 100 * score / reference score), ``avg_over`` and ``left_out``."""
    row.avg, row.avg_over, row.left_out, row.no_avg = None, [], {}, None
    if reference is None:
        row.no_avg = "no unpruned run to compare with"
        return row
    if row.convention != reference.convention:
        row.no_avg = f"its convention ({row.convention}) is not the reference's ({reference.convention})"
        return row
    ratios = []
    for col, score in row.scores.items():
        ref = reference.scores.get(col)
        if ref is None:
            row.left_out[col] = "not in the unpruned run"
        elif ref == 0:
            row.left_out[col] = "unpruned score is 0"
        else:
            ratios.append(100.0 * score / ref)
            row.avg_over.append(col)
    row.avg = sum(ratios) / len(ratios) if ratios else None
    return row


def with_averages(rows: Sequence[Row]) -> List[Row]:
    reference = find_reference(rows)
    return [percent_of_reference(r, reference) for r in sort_rows(rows)]


def sort_rows(rows: Sequence[Row]) -> List[Row]:
    """Unpruned first, then K from large to small, methods in first-seen order within a K."""
    order = {}
    for r in rows:
        order.setdefault(r.method, len(order))
    return sorted(rows, key=lambda r: (not r.is_unpruned, -r.keep, order[r.method]))


def columns_of(*row_sets: Sequence[Row]) -> List[str]:
    """Benchmark columns present, in the papers' order, unknown benchmarks after them."""
    present = {c for rows in row_sets for r in rows for c in r.scores}
    known = [h for _, h, _ in BENCHMARKS if h in present]
    return known + sorted(present - set(known))


# ---------------------------------------------------------------- writing
def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1f}"


def to_markdown(rows: Sequence[Row], columns: Sequence[str], title: str) -> str:
    header = ["Method", "K", *columns, AVG]
    lines = [f"### {title}", "", f"Convention: {CONVENTION}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    notes = []
    for r in rows:
        cells = [r.method, str(r.keep), *(_fmt(r.scores.get(c)) for c in columns), _fmt(r.avg)]
        lines.append("| " + " | ".join(cells) + " |")
        if r.lenient:
            notes.append(f"- {r.method} K={r.keep}: the official scorer's figures are shown; with --parser lenient: "
                         + ", ".join(f"{c} {_fmt(v)}" for c, v in r.lenient.items()))
        if r.no_avg:
            notes.append(f"- {r.method} K={r.keep}: no average: {r.no_avg}")
        elif r.left_out:
            why = "; ".join(f"{c} ({reason})" for c, reason in r.left_out.items())
            notes.append(f"- {r.method} K={r.keep}: left out of the average: {why}")
    sets: Dict[Tuple[str, ...], List[str]] = {}
    for r in rows:
        if r.avg is not None:
            sets.setdefault(tuple(r.avg_over), []).append(f"{r.method} K={r.keep}")
    if len(sets) > 1:
        notes.append("- the averages cover different benchmarks: " + "; ".join(
            f"{', '.join(cols)} for {', '.join(who)}" for cols, who in sets.items()))
    sources = sorted({r.source for r in rows if r.source != "ours"})
    if sources:
        notes.append("- sources: " + "; ".join(sources))
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_csv(path: str, rows: Sequence[Row], columns: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "K", *columns, AVG, "avg_over", "source"])
        for r in rows:
            writer.writerow([r.method, r.keep, *("" if r.scores.get(c) is None else round(r.scores[c], 4) for c in columns),
                             "" if r.avg is None else round(r.avg, 4), " ".join(r.avg_over), r.source])


def plot(path: str, rows: Sequence[Row], columns: Sequence[str], published: Sequence[Row] = ()) -> None:
    """Score vs K, one panel per benchmark; each method's line starts at the unpruned point,
    the unpruned score is a dashed line; published rows (if any) dotted."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    n = len(columns)
    ncols = min(5, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    # one colour per method name, so ours and the published row of a method match
    names = list(dict.fromkeys(r.method.lower() for r in [*rows, *published] if not r.is_unpruned))
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    ks = sorted({r.keep for r in [*rows, *published]})
    for ax, col in zip(axes, columns):
        for group, style in ((rows, "-"), (published, ":")):
            reference = find_reference(group)
            comparable = [r for r in group if r.convention == REFERENCE_CONVENTION]
            for method in dict.fromkeys(r.method for r in comparable if not r.is_unpruned):
                pts = sorted((r.keep, r.scores[col]) for r in comparable if r.method == method and col in r.scores)
                if reference is not None and col in reference.scores:
                    pts.append((reference.keep, reference.scores[col]))
                if pts:
                    label = method if style == "-" else f"{method} (published)"
                    ax.plot([k for k, _ in pts], [s for _, s in pts], style, marker="o", markersize=3, label=label,
                            color=colour[method.lower()])
            if reference is not None and col in reference.scores:
                ax.axhline(reference.scores[col], linestyle="--", color="gray" if style == "-" else "silver", linewidth=1)
        ax.set_title(col)
        ax.set_xlabel("visual tokens kept (K)")
        ax.set_xticks(ks)
    for ax in axes[n:]:
        ax.set_visible(False)
    legend = {}
    for ax in axes[:n]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        labels = list(legend)
        fig.legend(list(legend.values()), labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small")
    fig.suptitle("score vs visual tokens kept (dashed: unpruned)")
    fig.savefig(path, dpi=120)


def build_tables(results_dir: str, out_prefix: str, published_file: Optional[str] = None) -> str:
    """Write PREFIX.md / .csv / .png for ``results_dir``; returns the Markdown."""
    ours = with_averages(load_results(results_dir))
    if not ours:
        raise ValueError(f"no scored runs under {results_dir!r}: expected <label>_k<K>/<bench>/result.json")
    published, published_md = published_table(published_file) if published_file else ([], "")
    columns = columns_of(ours)
    model = os.path.basename(os.path.normpath(results_dir))
    md = to_markdown(ours, columns, f"{model}: ours ({results_dir})")
    if published:
        md += "\n" + published_md
    write_outputs(out_prefix, md, ours, columns, published)
    return md


def published_table(published_file: str = PUBLISHED_FILE) -> Tuple[List[Row], str]:
    """The published rows with their averages, and their Markdown table."""
    published = with_averages(load_published(published_file))
    md = to_markdown(published, columns_of(published), f"Published, LLaVA-1.5-7B ({os.path.basename(published_file)})")
    return published, md


def write_outputs(out_prefix: str, md: str, ours: Sequence[Row], columns: Sequence[str], published: Sequence[Row]) -> None:
    parent = os.path.dirname(os.path.abspath(out_prefix))
    os.makedirs(parent, exist_ok=True)
    with open(out_prefix + ".md", "w", encoding="utf-8") as f:
        f.write(md)
    write_csv(out_prefix + ".csv", list(ours) + list(published), columns_of(ours, published))
    plot(out_prefix + ".png", ours, columns, published)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", nargs="?", default=None,
                   help="results/<model name>: holds <label>_k<K>/<bench>/result.json "
                        "(leave out with --published to print the published rows alone)")
    p.add_argument("--out", default=None, help="output prefix (default RESULTS_DIR/table): writes .md, .csv, .png")
    p.add_argument("--published", action="store_true", help="add the published LLaVA-1.5-7B rows beside ours")
    p.add_argument("--published-file", default=None, help=f"CSV of published rows (default {PUBLISHED_FILE}); implies --published")
    args = p.parse_args(argv)
    published_file = args.published_file or (PUBLISHED_FILE if args.published else None)
    out = args.out or (os.path.join(args.results_dir, "table") if args.results_dir else None)
    try:
        if args.results_dir is None:
            if published_file is None:
                raise ValueError("give a results directory, or --published to print the published rows alone")
            published, md = published_table(published_file)
            if out:
                write_outputs(out, md, [], columns_of(published), published)
        else:
            md = build_tables(args.results_dir, out, published_file)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md)
    if out:
        print(f"[tables] wrote {out}.md, {out}.csv, {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
