"""VQAv2 scorer: soft accuracy, coverage checks, EvalAI submission (scoring/vqav2.py)."""

import json

import pytest

from llava.eval.scoring import vqav2


def _ans(qid, text):
    return {"question_id": qid, "prompt": "q", "text": text, "answer_id": "x", "model_id": "m",
            "metadata": {}}


ANN = {
    1: {"answers": ["yes"] * 10, "answer_type": "yes/no"},
    2: {"answers": ["2", "two"] + ["3"] * 8, "answer_type": "number"},
    3: {"answers": ["blue"] * 10, "answer_type": "other"},
}


def test_score_hand_derived():
    answers = [_ans(1, "Yes."), _ans(2, "Two"), _ans(3, "red")]
    res = vqav2.score(answers, ANN)
    # q1: 10/10 match -> 1; q2: "two" -> "2" matches 2 of 10 -> 0.6; q3: 0.
    # mean = 1.6 / 3 = 53.33%
    assert res["headline"] == pytest.approx(160 / 3)
    assert res["n"] == 3
    assert res["metrics"]["accuracy_per_answer_type"] == pytest.approx(
        {"yes/no": 100.0, "number": 60.0, "other": 0.0})
    assert set(res) == {"benchmark", "headline", "metrics", "n"}


def test_missing_unknown_duplicate():
    with pytest.raises(ValueError, match="no answer"):
        vqav2.score([_ans(1, "yes")], ANN)
    res = vqav2.score([_ans(1, "yes")], ANN, allow_missing=True)
    assert res["headline"] == 100.0 and res["n"] == 1 and res["metrics"]["n_missing"] == 2
    with pytest.raises(ValueError, match="not in"):
        vqav2.score([_ans(1, "yes"), _ans(99, "yes")], ANN, allow_missing=True)
    with pytest.raises(ValueError, match="two answers"):
        vqav2.score([_ans(1, "yes"), _ans(1, "no")], ANN, allow_missing=True)


def test_question_file_restricts_scored_set():
    res = vqav2.score([_ans(1, "yes"), _ans(3, "blue")], ANN, question_ids=[1, 3])
    assert res["headline"] == 100.0 and res["n"] == 2


def test_submission_normalises_and_fills():
    rows, n_empty = vqav2.submission([_ans(1, "Two dogs."), _ans(2, "It's the dog")], [1, 2, 5])
    assert rows == [{"question_id": 1, "answer": "2 dogs"},
                    {"question_id": 2, "answer": "it 's dog"},
                    {"question_id": 5, "answer": ""}]
    assert n_empty == 1
    with pytest.raises(ValueError, match="outside"):
        vqav2.submission([_ans(7, "x")], [1])


def test_cli_requires_a_target(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(_ans(1, "yes")) + "\n")
    with pytest.raises(SystemExit):
        vqav2.main(["--answers-file", str(p)])


def test_bad_jsonl_names_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(_ans(1, "yes")) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"a\.jsonl:2"):
        vqav2.main(["--answers-file", str(p), "--submission-file", str(tmp_path / "s.json")])
