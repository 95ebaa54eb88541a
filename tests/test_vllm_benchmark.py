"""benchmarks/vllm_throughput.py without vLLM: K parsing, the ratios to K=576 beside the
analytic LLM prefill-FLOPs ratio, and the reports it writes (the vLLM run itself is
exercised by hand: ``python -m benchmarks.vllm_throughput``, docs/serving.md)."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from benchmarks.efficiency.flops import llava15_7b_shape, llm_prefill_flops
from benchmarks.vllm_throughput import add_ratios, parse_keeps, write_reports


def test_keeps_always_include_the_unpruned_baseline():
    assert parse_keeps("64,128") == [576, 128, 64]
    assert parse_keeps("576,192,128,64") == [576, 192, 128, 64]
    for bad in ("0", "577", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_keeps(bad)


def test_ratios_and_reports(tmp_path):
    model = tmp_path / "ckpt"
    model.mkdir()
    text = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=256, vocab_size=576)
    (model / "config.json").write_text(json.dumps({"text_config": text}))
    rows = [{"keep": k, "prompt_tokens": 20 + k, "requests": 8, "ttft_s": t, "total_s": 8 / r,
             "requests_per_s": r, "output_tokens_per_s": 16 * r}
            for k, t, r in ((576, 0.4, 10.0), (64, 0.1, 25.0))]
    add_ratios(rows, str(model))
    base, pruned = rows
    assert base["requests_per_s_ratio"] == 1 and base["llm_prefill_flops_ratio"] == 1
    assert pruned["requests_per_s_ratio"] == pytest.approx(2.5)
    assert pruned["output_tokens_per_s_ratio"] == pytest.approx(2.5)
    assert pruned["ttft_speedup"] == pytest.approx(4.0)
    seven_b = llava15_7b_shape().llm
    assert pruned["llava7b_llm_prefill_flops_ratio"] == pytest.approx(llm_prefill_flops(seven_b, 84) / llm_prefill_flops(seven_b, 596))
    assert 0 < pruned["llm_prefill_flops_ratio"] < 64 / 576 * 1.5
    paths = write_reports(rows, str(tmp_path / "out"), "synthetic")
    assert [os.path.basename(p) for p in paths] == ["vllm_throughput.csv", "vllm_throughput.md", "vllm_throughput.png"]
    assert all(os.path.getsize(p) > 0 for p in paths)
    assert "| 64 | 84 |" in open(paths[1]).read()
