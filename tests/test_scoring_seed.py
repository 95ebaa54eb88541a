"""SEED-Bench scorer: image questions only, per question type (scoring/seed.py)."""

import pytest

from llava.eval.scoring import seed


def _q(qid, answer, type_id, data_type="image"):
    return {"question_id": qid, "answer": answer, "question_type_id": type_id,
            "data_type": data_type, "choice_a": "one", "choice_b": "two", "choice_c": "three",
            "choice_d": "four", "question": "q", "data_id": f"{qid}.jpg"}


ANNOTATION = {"question_type": {"Scene Understanding": 1, "Instances Counting": 5,
                                "Action Recognition": 10},
              "questions": [_q("1", "A", 1), _q("2", "B", 5), _q("3", "C", 5),
                            _q("4", "D", 10, "video")]}


def _ans(qid, text):
    return {"question_id": qid, "prompt": "p", "text": text}


def test_score_image_only():
    # 1 right ("A."), 2 right (option text "two"), 3 wrong; the video answer is ignored.
    answers = [_ans(1, "A."), _ans("2", "two"), _ans("3", "D"), _ans("4", "D")]
    res = seed.score(answers, ANNOTATION)
    assert res["headline"] == pytest.approx(200 / 3)
    assert res["n"] == 3
    assert res["metrics"]["accuracy_per_question_type"] == {"Scene Understanding": 100.0,
                                                            "Instances Counting": 50.0}
    assert res["metrics"]["n_ignored_video"] == 1


def test_missing_and_unknown():
    with pytest.raises(ValueError, match="no answer"):
        seed.score([_ans("1", "A")], ANNOTATION)
    with pytest.raises(ValueError, match="not in SEED"):
        seed.score([_ans("77", "A")], ANNOTATION, allow_missing=True)


def test_submission_rows_follow_annotation_order():
    rows = seed.submission([_ans("3", "C"), _ans("1", "A")], ANNOTATION)
    assert rows == [{"question_id": "1", "prediction": "A"}, {"question_id": "3", "prediction": "C"}]
