"""llava.eval.tables on hand-made result files: the average as % of the unpruned run,
what is left out of it and why, ordering, the three output files, and the published rows."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llava.eval import tables


def write_result(root: Path, run: str, folder: str, headline: float, benchmark: str | None = None) -> None:
    path = root / run / folder / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    name = benchmark or tables.RESULT_NAME.get(folder, folder)
    path.write_text(json.dumps({"benchmark": name, "headline": headline, "metrics": {}, "n": 10}))


@pytest.fixture()
def run_set(tmp_path) -> Path:
    root = tmp_path / "results" / "llava-v1.5-tiny"
    for folder, score in (("gqa", 60.0), ("mme", 1800.0), ("pope", 80.0), ("seed", 0.0)):
        write_result(root, "unpruned_k576", folder, score)
    # holov K=64: 90 %, 90 %, 95 % of unpruned; SEED's unpruned score is 0 -> left out
    for folder, score in (("gqa", 54.0), ("mme", 1620.0), ("pope", 76.0), ("seed", 5.0)):
        write_result(root, "holov_k64", folder, score)
    # holov K=128: only GQA and POPE were run: (95 + 100) / 2
    write_result(root, "holov_k128", "gqa", 57.0)
    write_result(root, "holov_k128", "pope", 80.0)
    # cls_topk K=64: GQA 50 %, SQA has no unpruned run -> left out
    write_result(root, "cls_topk_k64", "gqa", 30.0)
    write_result(root, "cls_topk_k64", "sqa", 55.0)
    (root / "logs").mkdir()  # not a run folder: ignored
    return root


def by_key(rows):
    return {(r.method, r.keep): r for r in rows}


def test_average_is_percent_of_unpruned(run_set):
    rows = by_key(tables.with_averages(tables.load_results(str(run_set))))
    assert rows[("unpruned", 576)].avg == pytest.approx(100.0)
    assert rows[("holov", 64)].avg == pytest.approx((90 + 90 + 95) / 3)
    assert rows[("holov", 64)].avg_over == ["GQA", "MME", "POPE"]
    assert rows[("holov", 64)].left_out == {"SEED": "unpruned score is 0"}
    assert rows[("holov", 128)].avg == pytest.approx(97.5)
    assert rows[("cls_topk", 64)].avg == pytest.approx(50.0)
    assert rows[("cls_topk", 64)].left_out == {"SQA": "not in the unpruned run"}


def test_rows_sorted_unpruned_first_then_k_down(run_set):
    rows = tables.with_averages(tables.load_results(str(run_set)))
    assert [(r.method, r.keep) for r in rows] == [("unpruned", 576), ("holov", 128), ("cls_topk", 64), ("holov", 64)]


def test_no_unpruned_run_gives_no_average(tmp_path):
    root = tmp_path / "m"
    write_result(root, "holov_k64", "gqa", 50.0)
    (row,) = tables.with_averages(tables.load_results(str(root)))
    assert row.avg is None and "no unpruned run" in row.no_avg


def test_outputs_markdown_csv_png(run_set, tmp_path):
    prefix = tmp_path / "out" / "table"
    md = tables.build_tables(str(run_set), str(prefix))
    assert md == (tmp_path / "out/table.md").read_text(encoding="utf-8")
    assert "MME = perception + cognition" in md and "POPE = mean F1" in md and "SQA = accuracy" in md
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header == "| Method | K | GQA | MME | POPE | SQA | SEED | Avg (% of unpruned) |"
    assert "| holov | 64 | 54.0 | 1620.0 | 76.0 | – | 5.0 | 91.7 |" in md
    assert "SEED (unpruned score is 0)" in md
    with open(f"{prefix}.csv", newline="") as f:
        got = {(r["method"], r["K"]): r for r in csv.DictReader(f)}
    assert float(got[("holov", "64")]["Avg (% of unpruned)"]) == pytest.approx(91.6667, abs=1e-3)
    assert got[("holov", "64")]["avg_over"] == "GQA MME POPE"
    assert got[("cls_topk", "64")]["MME"] == ""
    assert (tmp_path / "out/table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_results_raise(tmp_path):
    root = tmp_path / "m"
    write_result(root, "unpruned_k576", "gqa", 50.0, benchmark="scienceqa")
    with pytest.raises(ValueError, match="scienceqa.*gqa"):
        tables.load_results(str(root))
    root2 = tmp_path / "m2"
    write_result(root2, "unpruned_k576", "pope", float("nan"))
    with pytest.raises(ValueError, match="finite"):
        tables.load_results(str(root2))
    with pytest.raises(ValueError, match="does not exist"):
        tables.load_results(str(tmp_path / "missing"))


def test_published_rows_reproduce_the_papers_average():
    rows = by_key(tables.with_averages(tables.load_published()))
    # HoloV's abstract: 95.8 % of the unpruned model at K = 64 (our mean over its 9 columns: 95.7)
    assert rows[("HoloV", 64)].avg == pytest.approx(95.8, abs=0.15)
    assert rows[("HoloV", 64)].scores["MME"] == 1715 and rows[("unpruned", 576)].scores["MME"] == 1862
    assert len(rows[("HoloV", 64)].avg_over) == 9
    # the model-zoo row uses perception-only MME: no average against the papers' reference
    assert rows[("unpruned (LLaVA zoo)", 576)].avg is None
    for method in ("HoloV", "VisionZip", "SparseVLM", "FastV", "DART"):
        avgs = [rows[(method, k)].avg for k in (192, 128, 64)]
        assert avgs == sorted(avgs, reverse=True), f"{method}: fewer tokens should not score higher: {avgs}"
        assert all(r.source for r in rows.values())


def test_cli_with_published(run_set, tmp_path, capsys):
    assert tables.main([str(run_set), "--out", str(tmp_path / "t"), "--published"]) == 0
    out = capsys.readouterr().out
    assert "Published, LLaVA-1.5-7B" in out and "| HoloV | 64 |" in out and "| holov | 64 |" in out
    with open(tmp_path / "t.csv", newline="") as f:
        sources = {r["source"] for r in csv.DictReader(f)}
    assert "ours" in sources and "HoloV Table 1" in sources
    assert tables.main([str(tmp_path / "nothing-here")]) == 2


def test_lenient_figures_are_named_beside_the_official_ones(tmp_path):
    root = tmp_path / "results" / "m"
    write_result(root, "unpruned_k576", "gqa", 60.0)
    path = root / "holov_k64" / "gqa" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"benchmark": "gqa", "headline": 54.0, "metrics": {}, "n": 10, "parser": "lenient",
                                "lenient": {"headline": 55.5, "metrics": {}, "n": 10}}))
    rows = by_key(tables.load_results(str(root)))
    assert rows[("holov", 64)].scores == {"GQA": 54.0}  # the official figure stays in the table
    assert rows[("holov", 64)].lenient == {"GQA": 55.5}
    md = tables.to_markdown(list(rows.values()), ["GQA"], "t")
    assert "- holov K=64: the official scorer's figures are shown; with --parser lenient: GQA 55.5" in md


# Hand-copied from the papers (LLaVA-1.5-7B), column order GQA, MMB, MMB-CN, POPE, SQA, VQAv2, TextVQA, VizWiz:
# - CDPruner, arXiv 2506.10967 (NeurIPS 2025), Table 1 (the same table is on the authors' project page,
#   github.com/Theia-4869/CDPruner branch gh-pages, static/image/llava-1.5-7b.png); MME there is perception only.
# - VisPruner, arXiv 2412.01818 (ICCV 2025), Table 1 (same: Theia-4869/VisPruner gh-pages,
#   static/image/llava-1.5-7b.png); MME there is perception only, its reference row is the LLaVA-zoo one.
# - DART, arXiv 2502.11494 (EMNLP 2025 version), Table 1; MME there is perception + cognition (unpruned 1862).
PAPER_ROWS = {
    ("CDPruner", 128): dict(GQA=59.9, MMB=63.1, **{"MMB-CN": 55.0}, POPE=87.7, SQA=69.0, VQAv2=76.6, TextVQA=56.2, VizWiz=52.8),
    ("CDPruner", 64): dict(GQA=58.6, MMB=61.1, **{"MMB-CN": 53.2}, POPE=87.5, SQA=68.1, VQAv2=75.4, TextVQA=55.3, VizWiz=53.4),
    ("VisPruner", 128): dict(GQA=58.2, MMB=62.7, **{"MMB-CN": 57.3}, POPE=84.6, SQA=69.1, VQAv2=75.8, TextVQA=57.0, VizWiz=52.7),
    ("VisPruner", 64): dict(GQA=55.4, MMB=61.3, **{"MMB-CN": 55.1}, POPE=80.4, SQA=69.1, VQAv2=72.7, TextVQA=55.8, VizWiz=53.3),
}
PAPER_SOURCE = {"CDPruner": "arXiv 2506.10967 Table 1", "VisPruner": "arXiv 2412.01818 Table 1",
                "DART": "arXiv 2502.11494 Table 1"}


def test_published_cdpruner_vispruner_rows_match_the_papers():
    rows = by_key(tables.with_averages(tables.load_published()))
    for key, expected in PAPER_ROWS.items():
        assert rows[key].scores == pytest.approx(expected), key
        # the papers' MME is perception only: not put in the perception + cognition column
        assert "MME" not in rows[key].scores, key
        assert rows[key].convention == tables.REFERENCE_CONVENTION and rows[key].avg is not None
    # MME perception-only figures are named in the source instead (CDPruner 1431.4 / VisPruner 1461.4 at K=128)
    assert "1431.4" in rows[("CDPruner", 128)].source and "1461.4" in rows[("VisPruner", 128)].source
    # DART Table 1: K=192 MME 1856 (P+C), VizWiz 51.2 / 51.7 / 51.6 at K = 192 / 128 / 64
    assert rows[("DART", 192)].scores["MME"] == 1856 and rows[("DART", 192)].scores["GQA"] == 60.0
    assert [rows[("DART", k)].scores["VizWiz"] for k in (192, 128, 64)] == [51.2, 51.7, 51.6]
    # neither CDPruner nor VisPruner reports K=192 on LLaVA-1.5-7B (their Table 1 has 128 / 64 / 32)
    assert ("CDPruner", 192) not in rows and ("VisPruner", 192) not in rows
    for method, source in PAPER_SOURCE.items():
        found = [r for r in rows.values() if r.method == method]
        assert found and all(source in r.source for r in found), method
    for method in ("CDPruner", "VisPruner"):
        assert rows[(method, 128)].avg > rows[(method, 64)].avg


def test_cli_prints_the_published_rows_without_a_results_dir(tmp_path, capsys):
    assert tables.main(["--published"]) == 0
    out = capsys.readouterr().out
    assert "| CDPruner | 128 | 59.9 | 63.1 | 55.0 | – | 87.7 |" in out
    assert "| VisPruner | 64 | 55.4 | 61.3 | 55.1 | – | 80.4 |" in out
    assert "[tables] wrote" not in out and ": ours (" not in out
    assert tables.main(["--published", "--out", str(tmp_path / "p")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        got = {(r["method"], r["K"]): r for r in csv.DictReader(f)}
    assert got[("CDPruner", "64")]["POPE"] == "87.5" and "2506.10967" in got[("CDPruner", "64")]["source"]
    assert (tmp_path / "p.png").exists()
    assert tables.main([]) == 2
