"""The efficiency report (benchmarks.efficiency) and its FLOPs model (benchmarks.efficiency.flops).

The FLOPs model is checked three ways: against an independent transcription of the
formula here, against torch.utils.flop_counter on real prefills (eager attention, so the
attention matmuls are visible to the counter), and by counting the CLIP layers that run.
"""
from __future__ import annotations

import csv
import math

import pytest
import torch

from holov_patches import PruningConfig
from benchmarks.efficiency.cli import main, parse_args, run
from benchmarks.efficiency.measure import DEFAULT_KEEPS, build_prompt, check_keeps, check_method
from benchmarks.efficiency.random_model import build_random_llava
from benchmarks.efficiency.flops import (LlavaShape, LLMShape, VisionShape, cls_row_flops, kv_cache_bytes,
                                         prefill_flops, shape_from_model)

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # whole scripts / models end to end

COLUMNS = {"round", "K", "tokens", "tokens_measured", "flops_vision", "flops_projector", "flops_pruner", "flops_llm",
           "flops_total", "flops_selection", "flops_total_ratio", "vision_ms", "pruner_ms", "prefill_ms",
           "decode_ms_per_token", "peak_extra_bytes", "peak_total_bytes", "kv_bytes_formula", "kv_bytes_measured",
           "prefill_time_ratio", "decode_time_ratio", "peak_extra_ratio", "kv_ratio", "prefill_speedup", "flops_speedup"}


def _load(path: str, attn: str | None = None):
    from llava.model.builder import load_pretrained_model

    kwargs = {"attn_implementation": attn} if attn else {}
    tokenizer, model, processor, _ = load_pretrained_model(path, None, "llava-v1.5-tiny", device="cpu", pruning=None, **kwargs)
    if attn:
        model.get_vision_tower().vision_tower.set_attn_implementation(attn)
    return tokenizer, model, processor


def _expected_flops(cfg, vcfg, text: int, keep: int | None, selection: int) -> int:
    """The report's FLOPs, written out again from the configs (tiny model: no GQA, 336/14 tower, mlp2x_gelu)."""
    d, L, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    c, vi, vl = vcfg.hidden_size, vcfg.intermediate_size, vcfg.num_hidden_layers
    patches = (336 // 14) ** 2
    tv = patches + 1
    vision = 2 * patches * 3 * 14 * 14 * c + (vl - 1) * (8 * tv * c * c + 4 * tv * tv * c + 4 * tv * c * vi)
    projector = 2 * patches * c * d + 2 * patches * d * d
    t = text + (keep or patches)
    llm = L * (8 * t * d * d + 4 * t * t * d + 6 * t * d * inter) + 2 * d * vocab
    pruner = 0 if keep is None else 2 * c * c + 2 * tv * c * c + 2 * tv * c + selection
    return vision + projector + llm + pruner


@pytest.fixture(scope="module")
def report_run(tiny_llava_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eff") / "efficiency"
    argv = ["--model-path", tiny_llava_path, "--reps", "1", "--new-tokens", "3", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    return out, rows, argv


def test_report_files_and_table_structure(report_run):
    out, rows, argv = report_run
    assert [int(r["K"]) for r in rows] == sorted(DEFAULT_KEEPS, reverse=True)
    assert COLUMNS <= set(rows[0])
    base = rows[0]
    assert float(base["flops_total_ratio"]) == 1.0 and float(base["prefill_time_ratio"]) == 1.0
    assert float(base["pruner_ms"]) == 0.0 and int(base["flops_pruner"]) == 0
    for r in rows:
        assert float(r["prefill_ms"]) > 0 and float(r["vision_ms"]) > 0 and float(r["decode_ms_per_token"]) > 0
    for r in rows[1:]:
        assert float(r["pruner_ms"]) > 0 and int(r["flops_selection"]) > 0
        assert 0 < float(r["flops_total_ratio"]) < 1 and 0 < float(r["kv_ratio"]) < 1
        assert r["peak_total_bytes"] == ""  # no whole-process peak on CPU
    md = out.with_suffix(".md").read_text()
    assert md.splitlines()[0].startswith("# ")
    assert "python -m benchmarks.efficiency " + " ".join(argv) in md
    for heading in ("## Analytic prefill FLOPs", "## Measured, round 1", "## Prefill speedup at K=64",
                    "## Analytic count at LLaVA-1.5-7B shape"):
        assert heading in md
    tables, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert len(tables) == 4  # analytic, measured, ratios, 7B shape
    for table in tables:
        assert table[1].startswith("|---") and len(table) == 2 + len(rows)
        assert len({line.count("|") for line in table}) == 1, table
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_flops_follow_the_formula(report_run, tiny_llava):
    _, rows, _ = report_run
    tokenizer, model, processor, _ = tiny_llava
    text = build_prompt(model, tokenizer, processor).text_tokens
    cfg, vcfg = model.config, model.get_vision_tower().config
    expected = {}
    for r in rows:
        keep = int(r["K"])
        selection = int(r["flops_selection"])
        if keep < 576:  # HoloV faithful: P = floor(1024/576 * N / K) raster chunks of ceil(N/P), one Gram matrix each
            crops = math.floor(1024 / keep)
            assert selection == 2 * crops * math.ceil(576 / crops) ** 2 * cfg.hidden_size
        expected[keep] = _expected_flops(cfg, vcfg, text, None if keep == 576 else keep, selection)
        assert int(r["flops_total"]) == expected[keep]
        assert int(r["tokens"]) == int(r["tokens_measured"]) == text + keep
    for r in rows:
        assert float(r["flops_total_ratio"]) == pytest.approx(expected[int(r["K"])] / expected[576], rel=1e-5)


def test_report_kv_cache_and_memory_measured(report_run, tiny_llava):
    _, rows, _ = report_run
    cfg = tiny_llava[1].config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    for r in rows:
        formula = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * int(r["tokens"]) * 4  # float32
        assert int(r["kv_bytes_measured"]) == int(r["kv_bytes_formula"]) == formula
        # the cache is allocated during prefill and still alive at its end
        assert int(r["peak_extra_bytes"]) >= int(r["kv_bytes_measured"])


@pytest.mark.parametrize("keep,method", [(None, None), (64, "cls_topk"), (128, "holov")])
def test_flops_model_matches_flop_counter(tiny_llava_path, keep, method):
    from torch.utils.flop_counter import FlopCounterMode

    tokenizer, model, processor = _load(tiny_llava_path, attn="eager")
    prompt = build_prompt(model, tokenizer, processor)
    config = PruningConfig(method=method, keep=keep) if keep else None
    model.set_pruning(config)
    selection = 0
    with torch.inference_mode():
        if config is not None:
            feats, attn = model.encode_images(prompt.images, with_cls_attn=True)
            with FlopCounterMode(display=False) as sel:
                from holov_patches.api import prune_visual_tokens
                prune_visual_tokens(feats, attn, config, grid=(24, 24))
            selection = sel.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model(input_ids=prompt.input_ids, images=prompt.images, image_sizes=prompt.image_sizes, use_cache=True,
                  logits_to_keep=1)
    assert (selection == 0) == (method in (None, "cls_topk"))
    assert prefill_flops(shape_from_model(model), prompt.text_tokens, keep, selection)["total"] == counter.get_total_flops()


def test_vision_layers_run_counted(tiny_llava_path):
    tokenizer, model, processor = _load(tiny_llava_path)
    prompt = build_prompt(model, tokenizer, processor)
    tower = model.get_vision_tower()
    calls = []
    handles = [layer.register_forward_hook(lambda *a: calls.append(1)) for layer in tower.vision_tower.encoder.layers]
    shape = shape_from_model(model)
    for with_attn in (False, True):
        calls.clear()
        with torch.inference_mode():
            tower(prompt.images, with_cls_attn=with_attn)
        assert len(calls) == shape.vision.layers_run(with_attn) == shape.vision.layers - 1
    for h in handles:
        h.remove()


def test_build_random_llava_with_gqa(tmp_path):
    shape = LlavaShape(llm=LLMShape(hidden=96, layers=2, heads=4, kv_heads=2, head_dim=24, intermediate=200, vocab=700),
                       vision=VisionShape(hidden=32, intermediate=128, layers=3, heads=2), projector=((32, 96), (96, 96)))
    path = build_random_llava(str(tmp_path / "llava-v1.5-small-random"), shape, device="cpu")
    tokenizer, model, processor = _load(path)
    assert shape_from_model(model) == shape
    prompt = build_prompt(model, tokenizer, processor)
    with torch.inference_mode():
        out = model(input_ids=prompt.input_ids, images=prompt.images, image_sizes=prompt.image_sizes, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    size = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert size == kv_cache_bytes(shape.llm, prompt.text_tokens + 576, 4)


def test_random_7b_refused_on_cpu_and_inputs_checked():
    with pytest.raises(ValueError, match="--allow-cpu-7b"):
        run(parse_args(["--random-7b"]), "cmd")
    with pytest.raises(ValueError, match="exactly one"):
        run(parse_args([]), "cmd")
    with pytest.raises(ValueError, match=r"\[1, 576\]"):
        check_keeps([64, 577], 576)
    with pytest.raises(ValueError, match=r"\[1, 576\]"):
        check_keeps([0], 576)
    assert check_keeps([64, 192], 576) == [576, 192, 64]
    with pytest.raises(ValueError, match="fastv"):
        check_method("fastv")
    with pytest.raises(ValueError, match="must be an integer"):
        kv_cache_bytes(LLMShape(8, 1, 1, 1, 8, 8, 8), -1, 2)
    assert cls_row_flops(VisionShape(hidden=4, intermediate=16, layers=2, heads=1)) == 2 * 16 + 2 * 577 * 16 + 2 * 577 * 4


def test_fixed_cost_fit_recovers_a_line():
    from benchmarks.efficiency.report import _fixed_cost_fit

    rows = [{"K": k, "flops_total": f * 1e9, "prefill_ms": 40.0 + f / 0.25} for k, f in ((576, 400.0), (192, 180.0), (64, 110.0))]
    fit = _fixed_cost_fit(rows, 576, 64)
    assert fit["fixed_ms"] == pytest.approx(40.0) and fit["fit_gflops"] == pytest.approx(250.0)
    assert fit["fit_max_err"] == pytest.approx(0.0, abs=1e-9)
    assert fit["fit_speedup"] == pytest.approx((40 + 1600) / (40 + 440))


def test_compare_lists_earlier_runs(report_run, tiny_llava_path, tmp_path):
    from benchmarks.efficiency.report import read_other_run

    first, rows, argv = report_run
    out = tmp_path / "again"
    main(["--model-path", tiny_llava_path, "--keeps", "64", "--reps", "1", "--new-tokens", "2", "--out", str(out),
          "--no-progress", "--compare", str(first.with_suffix(".csv"))])
    md = out.with_suffix(".md").read_text()
    assert "Another run of this report (`python -m benchmarks.efficiency " + " ".join(argv) + "`)" in md
    earlier = next(r for r in rows if r["K"] == "64")
    assert f"prefill speedup {float(earlier['prefill_speedup']):.2f}x" in md
    assert "Over all 2 rounds" in md
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a CSV of this report"):
        read_other_run(str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match="no such file"):
        read_other_run(str(tmp_path / "missing.csv"))
