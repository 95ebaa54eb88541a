"""Scorer plumbing: the --parser result layout, the id-type check (scoring/scoring_io.py)."""

import argparse

import pytest

from llava.eval.scoring import scoring_io


def _result(headline, benchmark="seed"):
    return scoring_io.make_result(benchmark, headline, {"accuracy": headline}, 4)


def test_with_lenient_keeps_official_on_top():
    res = scoring_io.with_lenient(_result(50.0), _result(75.0))
    assert res["headline"] == 50.0 and res["metrics"] == {"accuracy": 50.0}
    assert res["parser"] == "lenient"
    assert res["lenient"] == {"headline": 75.0, "metrics": {"accuracy": 75.0}, "n": 4}
    assert set(res) == set(scoring_io.RESULT_KEYS) | set(scoring_io.LENIENT_RESULT_KEYS)
    with pytest.raises(ValueError, match="different benchmarks"):
        scoring_io.with_lenient(_result(1.0), _result(2.0, "gqa"))


def test_report_prints_both(capsys, tmp_path):
    scoring_io.report(scoring_io.with_lenient(_result(50.0), _result(75.0)),
                      str(tmp_path / "r.json"))
    out = capsys.readouterr().out
    assert "headline 50.00" in out
    assert "lenient parser (not the official figure): headline 75.00" in out


def test_parser_arg_defaults_to_official():
    p = argparse.ArgumentParser()
    scoring_io.add_parser_arg(p, "x")
    assert p.parse_args([]).parser == "official"
    assert p.parse_args(["--parser", "lenient"]).parser == "lenient"
    with pytest.raises(SystemExit):
        p.parse_args(["--parser", "loose"])


def test_check_id_types():
    scoring_io.check_id_types([{"question_id": 1}, {"question_id": 99}], [1, 2], what="x")
    with pytest.raises(ValueError, match=r"question_id '1' \(str\) where the official evaluator "
                                         r"looks up 1 \(int\)"):
        scoring_io.check_id_types([{"question_id": "1"}], [1, 2], what="x")
    with pytest.raises(ValueError, match=r"looks up '2' \(str\)"):
        scoring_io.check_id_types([{"question_id": 2}], ["1", "2"], what="x")
