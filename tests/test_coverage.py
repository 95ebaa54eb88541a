"""The synthetic maps and the coverage report: facts that hold by construction."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.coverage import run as coverage
from benchmarks.coverage.synthetic_maps import BACKGROUND, SALIENT, UNIFORM, MapSpec, make_map

REPO = Path(__file__).resolve().parents[1]
SMALL = MapSpec.small()  # 12 x 12, 6 objects, a 4 x 4 (16-token) salient one


# ---- synthetic maps ---------------------------------------------------------------------

def test_maps_are_determined_by_their_seed():
    a, b, c = make_map(3, SMALL), make_map(3, SMALL), make_map(4, SMALL)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.cls_attn, b.cls_attn) and torch.equal(a.object_id, b.object_id)
    assert not torch.equal(a.object_id, c.object_id)


@pytest.mark.parametrize("spec", [MapSpec(), SMALL], ids=["default", "small"])
def test_map_layout_sizes_and_margins(spec):
    for seed in range(5):
        smap = make_map(seed, spec)
        assert smap.tokens.shape == (1, spec.num_tokens, spec.dim) and smap.cls_attn.shape == (1, spec.num_tokens)
        ids = smap.object_id
        assert (ids == SALIENT).sum() == spec.salient_size ** 2
        for k, side in enumerate(spec.object_sizes, start=1):
            assert (ids == k).sum() == side ** 2
        assert (ids == UNIFORM).sum() == spec.uniform_size[0] * spec.uniform_size[1]
        # No two regions touch: growing any region by one patch (8-neighbourhood) reaches only background.
        grid = ids.view(1, 1, spec.rows, spec.cols)
        for ident in ids.unique().tolist():
            if ident == BACKGROUND:
                continue
            grown = F.max_pool2d((grid == ident).float(), 3, stride=1, padding=1).bool()
            assert set(grid[grown].unique().tolist()) <= {ident, BACKGROUND}


def test_map_attention_and_features_follow_the_design():
    for seed in range(5):
        smap = make_map(seed, MapSpec())
        attn, ids = smap.cls_attn[0], smap.object_id
        torch.testing.assert_close(attn.sum(), torch.tensor(1.0))
        assert attn[ids == SALIENT].min() > attn[ids != SALIENT].max(), "salient >> everything"
        assert attn[ids > 0].mean() > 2 * attn[ids < 0].mean(), "objects > background"
        unit = F.normalize(smap.tokens[0], dim=-1)
        sim = unit @ unit.T
        uniform = ids == UNIFORM
        assert sim[uniform][:, uniform].min() > 0.99, "the uniform region is near-duplicates"
        for ident in range(smap.num_objects):
            inside = ids == ident
            assert sim[inside][:, inside].min() > 0.9
            assert sim[inside][:, ~inside].max() < 0.6, "each object has its own direction"


@pytest.mark.parametrize("changes", [{"rows": 0}, {"dim": 2.5}, {"object_sizes": (1, 0)}, {"salient_size": 30},
                                     {"uniform_size": (3,)}, {"salient_attn": 1.0}, {"texture": -1.0},
                                     {"margin": True}])
def test_map_spec_rejects_bad_values(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        MapSpec(**changes)


def test_map_that_cannot_fit_raises():
    crowded = MapSpec(rows=6, cols=6, dim=8, object_sizes=(3, 3), salient_size=3, uniform_size=(3, 3))
    with pytest.raises(ValueError, match="could not place"):
        make_map(0, crowded)


# ---- report -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_report():
    return coverage.run_coverage(keeps=(200, 12, 6), seeds=3, spec=SMALL, progress=False)


def _m(result, label, keep, key):
    return result.mean[(label, keep, key)]


def test_report_covers_every_pre_llm_method(small_report):
    expected = {"cdpruner", "cls_topk", "divprune", "random", "visionzip", "visionzip_projected", "vispruner",
                *coverage.HOLOV_VARIANTS}
    assert set(small_report.labels) | set(small_report.skipped) == expected


def test_attention_first_spends_a_small_budget_on_the_salient_object(small_report):
    # K <= 16 salient tokens: cls_topk keeps only salient tokens, so it covers exactly 1 of 6 objects.
    for keep in (12, 6):
        assert _m(small_report, "cls_topk", keep, "salient_share") == 1.0
        assert _m(small_report, "cls_topk", keep, "object_coverage") == pytest.approx(1 / SMALL.num_objects)
        assert _m(small_report, "divprune", keep, "object_coverage") > _m(small_report, "cls_topk", keep, "object_coverage")
        assert _m(small_report, "divprune", keep, "dropped_distance") < _m(small_report, "cls_topk", keep, "dropped_distance")
        assert _m(small_report, "random", keep, "spatial_gap") < _m(small_report, "cls_topk", keep, "spatial_gap")
        assert _m(small_report, "random", keep, "salient_share") < 0.5


def test_keeping_everything_scores_perfectly(small_report):
    for label in small_report.labels:  # K = 200 >= N = 144
        assert _m(small_report, label, 200, "object_coverage") == 1.0
        assert _m(small_report, label, 200, "dropped_distance") == 0.0
        assert _m(small_report, label, 200, "spatial_gap") == 0.0


def test_placeholder_methods_are_left_out_and_named(tmp_path):
    def placeholder(tokens, cls_attn, keep, seed, grid):
        raise NotImplementedError("not written yet")

    real = [v for v in coverage.default_variants() if v.label == "cls_topk"]
    result = coverage.run_coverage(keeps=(8,), seeds=2, spec=SMALL, progress=False,
                                   variants=real + [coverage.Variant("stub", placeholder)])
    assert result.labels == ["cls_topk"] and "not written yet" in result.skipped["stub"]
    md, _, _ = coverage.write_report(result, tmp_path / "cov", "python -m benchmarks.coverage --seeds 2")
    assert "`stub`: NotImplementedError: not written yet" in md.read_text()


def test_other_pruner_errors_are_not_swallowed():
    def broken(tokens, cls_attn, keep, seed, grid):
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        coverage.run_coverage(keeps=(8,), seeds=1, spec=SMALL, progress=False, variants=[coverage.Variant("x", broken)])


@pytest.mark.parametrize("kwargs", [{"keeps": ()}, {"keeps": (0,)}, {"seeds": 0}, {"keeps": (4.5,)}])
def test_run_coverage_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        coverage.run_coverage(**{"seeds": 1, "spec": SMALL, "progress": False, **kwargs})


def test_map_metrics_on_a_hand_made_case():
    smap = make_map(0, SMALL)
    salient = (smap.object_id == SALIENT).nonzero().flatten()
    index = salient[:1][None]  # keep a single salient token
    metrics = coverage.map_metrics(smap, smap.tokens[:, index[0]], index)
    assert metrics["object_coverage"] == pytest.approx(1 / SMALL.num_objects)
    assert metrics["salient_share"] == 1.0
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    r, c = divmod(int(salient[0]), 12)
    assert metrics["spatial_gap"] == pytest.approx(((rows - r) ** 2 + (cols - c) ** 2).sqrt().mean().item(), rel=1e-5)
    padded = torch.cat([index, torch.full((1, 2), -1)], dim=1)  # zero pads are ignored
    tokens = torch.cat([smap.tokens[:, index[0]], torch.zeros(1, 2, SMALL.dim)], dim=1)
    assert coverage.map_metrics(smap, tokens, padded) == metrics


@pytest.mark.subprocess
def test_cli_writes_markdown_csv_and_plot(tmp_path):
    out = tmp_path / "docs" / "coverage"
    args = ["--out", str(out), "--keeps", "12", "6", "--seeds", "2", "--spec", "small", "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.coverage", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "docs" / "coverage.md").read_text()
    assert md.splitlines()[4].strip() == "python -m benchmarks.coverage " + " ".join(args)
    rows = list(csv.DictReader((tmp_path / "docs" / "coverage.csv").read_text().splitlines()))
    labels = {r["method"] for r in rows}
    assert {"cls_topk", "divprune", "random", "visionzip"} <= labels
    assert len(rows) == 2 * len(labels) and {r["keep"] for r in rows} == {"12", "6"}
    for label in labels:
        assert f"| {label} |" in md
    assert (tmp_path / "docs" / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
