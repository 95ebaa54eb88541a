"""ScienceQA scorer: letter parsing, accuracy and IMG-accuracy (scoring/scienceqa.py)."""

import json

import pytest

from llava.eval.scoring import scienceqa

PROBLEMS = {
    "1": {"choices": ["a", "b"], "answer": 1, "image": "image.png", "subject": "natural science"},
    "2": {"choices": ["a", "b", "c"], "answer": 0, "image": "image.png", "subject": "natural science"},
    "3": {"choices": ["a", "b"], "answer": 0, "image": None, "subject": "language science"},
    "4": {"choices": ["a", "b"], "answer": 1, "image": None, "subject": "social science"},
    "9": {"choices": ["a", "b"], "answer": 1, "image": None, "subject": "social science"},
}
TEST = ["1", "2", "3", "4"]


def _ans(pid, text):
    return {"question_id": pid, "prompt": "p", "text": text}


def test_score_hand_derived():
    answers = [_ans("1", "The answer is B."),   # right (image)
               _ans("2", "C"),                  # wrong (image)
               _ans("3", "A. a"),               # right
               _ans("4", "C")]                  # 2 choices: "C" is not an option -> unparsed
    res = scienceqa.score(answers, PROBLEMS, TEST)
    assert res["headline"] == 50.0                    # IMG: 1 of 2
    assert res["metrics"]["accuracy"] == 50.0         # all: 2 of 4
    assert res["metrics"]["n_unparsed"] == 1
    assert res["metrics"]["accuracy_per_subject"] == {"language science": 100.0,
                                                      "natural science": 50.0,
                                                      "social science": 0.0}


def test_split_membership():
    with pytest.raises(ValueError, match="not in"):
        scienceqa.score([_ans("9", "B")], PROBLEMS, TEST, allow_missing=True)
    with pytest.raises(ValueError, match="no answer"):
        scienceqa.score([_ans("1", "B")], PROBLEMS, TEST)


def test_cli(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": TEST, "val": ["9"]}))
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(_ans(p, t)) + "\n" for p, t in
                         [("1", "B"), ("2", "A"), ("3", "A"), ("4", "B")]))
    res = scienceqa.main(["--answers-file", str(a), "--base-dir", str(tmp_path)])
    assert res["headline"] == 100.0
    with pytest.raises(ValueError, match="choose from"):
        scienceqa.main(["--answers-file", str(a), "--base-dir", str(tmp_path), "--split", "dev"])
