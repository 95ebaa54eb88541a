"""GQA scorer: exact match after LLaVA's normalisation (scoring/gqa.py)."""

import json

import pytest

from llava.eval.scoring import gqa

QUESTIONS = {
    "1": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr"}},
    "2": {"answer": "square", "isBalanced": True,
          "types": {"structural": "choose", "semantic": "rel"}},
    "3": {"answer": "left", "isBalanced": True, "types": {"structural": "query", "semantic": "rel"}},
    "4": {"answer": "no", "isBalanced": False, "types": {"structural": "verify", "semantic": "obj"}},
}


def _ans(qid, text):
    return {"question_id": qid, "prompt": "q", "text": text}


def test_normalisation():
    assert gqa.normalize_prediction(" Yes. ") == "yes"
    assert gqa.normalize_prediction("Left..") == "left"


def test_score_hand_derived():
    # 1: "Yes." -> "yes" right; 2: "The square" != "square" wrong (exact match);
    # 3: "LEFT" -> "left" right. The unbalanced question 4 is not part of the tier.
    res = gqa.score([_ans("1", "Yes."), _ans("2", "The square"), _ans(3, "LEFT")], QUESTIONS)
    assert res["headline"] == pytest.approx(200 / 3)
    assert res["metrics"]["accuracy_per_structural_type"] == {"choose": 0.0, "query": 100.0,
                                                              "verify": 100.0}
    assert res["metrics"]["accuracy_per_semantic_type"] == {"attr": 100.0, "rel": 50.0}


def test_unbalanced_answer_is_rejected():
    with pytest.raises(ValueError, match="not in"):
        gqa.score([_ans("4", "no")], QUESTIONS, allow_missing=True)


def test_cli_writes_predictions(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(_ans(q, t)) + "\n" for q, t in [("1", "No."), ("2", "Square"),
                                                                  ("3", "left")]))
    q = tmp_path / "q.json"
    q.write_text(json.dumps(QUESTIONS))
    pred, out = tmp_path / "testdev_balanced_predictions.json", tmp_path / "r.json"
    res = gqa.main(["--answers-file", str(a), "--annotation-file", str(q),
                    "--submission-file", str(pred), "--result-file", str(out)])
    assert json.loads(pred.read_text()) == [{"questionId": "1", "prediction": "no"},
                                            {"questionId": "2", "prediction": "square"},
                                            {"questionId": "3", "prediction": "left"}]
    assert json.loads(out.read_text())["headline"] == pytest.approx(200 / 3) == res["headline"]
