"""benchmarks.method_costs: one row per method, on the model's own inputs, with the prefill
length each method leaves and clear refusals."""
from __future__ import annotations

import pytest

from benchmarks.efficiency.measure import build_prompt
from benchmarks.method_costs import measure_methods, write_report


def test_rows_per_method_with_prefill_lengths_and_flops(tiny_llava, tmp_path):
    tok, model, proc, _ = tiny_llava
    prompt = build_prompt(model, tok, proc)
    rows = measure_methods(model, prompt, ["holov", "visionzip", "random"], keep=64, reps=1, progress=False)
    by_name = {r["method"]: r for r in rows}
    assert set(by_name) == {"holov", "visionzip", "random", "none (unpruned)"}
    for name in ("holov", "visionzip", "random"):
        assert by_name[name]["prefill_tokens"] == prompt.text_tokens + 64
        assert by_name[name]["inputs_s"] > 0 and by_name[name]["pruner_s"] > 0
    assert by_name["none (unpruned)"]["prefill_tokens"] == prompt.text_tokens + 576
    assert by_name["none (unpruned)"]["prefill_ratio"] == 1.0
    assert by_name["random"]["pruner_flops"] == 0 and by_name["holov"]["pruner_flops"] > 0
    assert by_name["visionzip"]["stage"] == "tower" and by_name["random"]["needs"] == "-"
    assert model.get_pruning() is None  # the model is left unpruned
    md, csv_path = write_report(rows, tmp_path / "costs", "cmd", 64)
    text = md.read_text()
    assert "| visionzip | tower | cls_attn_heads keys cls_token |" in text and csv_path.exists()


@pytest.mark.parametrize("methods,keep,match", [(["holv"], 64, "holv"), (["holov"], 576, "keep=576"),
                                                (["holov"], 0, "keep=0")])
def test_bad_methods_and_budgets_are_refused(tiny_llava, methods, keep, match):
    tok, model, proc, _ = tiny_llava
    with pytest.raises(ValueError, match=match):
        measure_methods(model, build_prompt(model, tok, proc), methods, keep=keep, reps=1, progress=False)
