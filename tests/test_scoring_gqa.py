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


@pytest.mark.parametrize("text, official, lenient", [
    # LLaVA's convert_gqa_for_eval.py: text.rstrip('.').lower(), nothing more.
    ("Yes.", "yes", "yes"),
    ("Left..", "left", "left"),
    ("YES", "yes", "yes"),
    ("yes ", "yes ", "yes"),      # trailing space kept: wrong against "yes"
    (" Yes. ", " yes. ", "yes"),  # rstrip('.') stops at the space
    ("yes.\n", "yes.\n", "yes"),
])
def test_official_and_lenient_preparation(text, official, lenient):
    assert gqa.official_prediction(text) == official
    assert gqa.lenient_prediction(text) == lenient


def test_score_hand_derived():
    # 1: "Yes." -> "yes" right; 2: "The square" != "square" wrong (exact match);
    # 3: "LEFT" -> "left" right. The unbalanced question 4 is not part of the tier.
    res = gqa.score([_ans("1", "Yes."), _ans("2", "The square"), _ans(3, "LEFT")], QUESTIONS)
    assert res["headline"] == pytest.approx(200 / 3)
    assert res["metrics"]["accuracy_per_structural_type"] == {"choose": 0.0, "query": 100.0,
                                                              "verify": 100.0}
    assert res["metrics"]["accuracy_per_semantic_type"] == {"attr": 100.0, "rel": 50.0}
    # eval.py: open = structural "query" (3: right), binary = the rest (1 right, 2 wrong)
    assert res["metrics"]["open_accuracy"] == 100.0
    assert res["metrics"]["binary_accuracy"] == 50.0


def test_trailing_whitespace_is_wrong_officially():
    # "yes " (1), "square" (2), "left\n" (3): officially only 2 is right -> 1/3;
    # lenient strips whitespace -> 3/3.
    answers = [_ans("1", "yes "), _ans("2", "square"), _ans("3", "left\n")]
    res = gqa.score(answers, QUESTIONS, parser="lenient")
    assert res["headline"] == pytest.approx(100 / 3)
    assert res["lenient"]["headline"] == 100.0
    assert gqa.score(answers, QUESTIONS)["headline"] == pytest.approx(100 / 3)


def test_words_and_steps_numbers():
    # eval.py: words = len(question.split()); steps = operations whose "op: arg" contains
    # none of "exist", "query: name", "choose name".
    qs = {"1": {"answer": "yes", "isBalanced": True, "question": "Is the cup red?",
                "types": {"structural": "verify", "semantic": "attr"},
                "semantic": [{"operation": "select", "argument": "cup"},
                             {"operation": "verify color", "argument": "red"}]},
          "2": {"answer": "cup", "isBalanced": True, "question": "What is it?",
                "types": {"structural": "query", "semantic": "cat"},
                "semantic": [{"operation": "select", "argument": "thing"},
                             {"operation": "query", "argument": "name"}]}}
    res = gqa.score([_ans("1", "yes"), _ans("2", "mug")], qs)
    assert res["metrics"]["accuracy_per_words_number"] == {"3": 0.0, "4": 100.0}
    # 1: select, verify color -> 2 steps; 2: "query: name" does not count -> 1 step
    assert res["metrics"]["accuracy_per_steps_number"] == {"1": 0.0, "2": 100.0}


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
