"""VizWiz scorer: soft accuracy incl. unanswerable, EvalAI submission (scoring/vizwiz.py)."""

import pytest

from llava.eval.scoring import vizwiz

QUESTIONS = [{"question_id": 0, "image": "v0.jpg", "text": "q0"},
             {"question_id": 1, "image": "v1.jpg", "text": "q1"}]


def _crowd(*groups):
    return [{"answer": a, "answer_confidence": "yes"} for a, n in groups for _ in range(n)]


ANN = [{"image": "v0.jpg", "answers": _crowd(("unanswerable", 10)), "answer_type": "unanswerable",
        "answerable": 0},
       {"image": "v1.jpg", "answers": _crowd(("coffee", 3), ("tea", 7)), "answer_type": "other",
        "answerable": 1}]


def _ans(qid, text):
    return {"question_id": qid, "prompt": "p", "text": text}


def test_score_hand_derived():
    # v0: "Unanswerable" -> "unanswerable" matches 10/10 -> 1; v1: "Coffee." matches 3 of 10
    # -> 0.9. Mean 0.95.
    res = vizwiz.score([_ans(0, "Unanswerable"), _ans(1, "Coffee.")], QUESTIONS, ANN)
    assert res["headline"] == pytest.approx(95.0)
    assert res["metrics"]["accuracy_unanswerable"] == 100.0
    assert res["metrics"]["accuracy_per_answer_type"] == pytest.approx(
        {"other": 90.0, "unanswerable": 100.0})


def test_test_annotations_without_answers_raise():
    with pytest.raises(ValueError, match="no annotated answers"):
        vizwiz.score([_ans(0, "x"), _ans(1, "y")], QUESTIONS,
                     [{"image": "v0.jpg", "question": "q"}, {"image": "v1.jpg", "question": "q"}])


def test_submission():
    rows = vizwiz.submission([_ans(0, "Unanswerable"), _ans(1, "Two cups!")], QUESTIONS)
    assert rows == [{"image": "v0.jpg", "answer": "unanswerable"},
                    {"image": "v1.jpg", "answer": "2 cups"}]
    with pytest.raises(ValueError, match="no answer"):
        vizwiz.submission([_ans(0, "x")], QUESTIONS)
    rows = vizwiz.submission([_ans(0, "x")], QUESTIONS, allow_missing=True)
    assert rows[1] == {"image": "v1.jpg", "answer": ""}
