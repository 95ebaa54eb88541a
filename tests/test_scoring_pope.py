"""POPE scorer: LLaVA's yes/no rule, confusion-matrix metrics, mean-F1 headline (scoring/pope.py)."""

import pytest

from llava.eval.scoring import pope


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("No", "no"),
    ("There is no dog.", "no"),
    ("It is not there", "no"),
    ("Yes. No.", "yes"),            # only the first sentence counts
    ("Yes, no problem.", "no"),     # comma removed: "no" is a word of the first sentence
    ("Not sure", "yes"),            # LLaVA's list is No / no / not: capital "Not" is missed
    ("Nope", "yes"),
    ("banana", "yes"),              # anything else is "yes"
])
def test_parse_yes_no(text, expected):
    assert pope.parse_yes_no(text) == expected


def test_binary_metrics_known_confusion_matrix():
    # TP=3 FP=1 TN=2 FN=2: P = 3/4, R = 3/5, F1 = 2PR/(P+R) = 0.9/1.35 = 2/3,
    # acc = 5/8, yes-ratio = 4/8.
    preds = ["yes"] * 3 + ["yes"] + ["no"] * 2 + ["no"] * 2
    labels = ["yes"] * 3 + ["no"] + ["no"] * 2 + ["yes"] * 2
    m = pope.binary_metrics(preds, labels)
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (3, 1, 2, 2)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["yes_ratio"] == pytest.approx(0.5)


def test_binary_metrics_no_positive_predictions():
    m = pope.binary_metrics(["no", "no"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 0.5
    with pytest.raises(ValueError, match="yes"):
        pope.binary_metrics(["maybe"], ["yes"])


def _q(qid, split, obj):
    return {"question_id": qid, "image": "im.jpg", "category": split,
            "text": f"Is there a {obj} in the image?\nAnswer the question using a single word or phrase."}


def _label(obj, label):
    return {"question_id": 1, "image": "im.jpg", "text": f"Is there a {obj} in the image?",
            "label": label}


def test_score_mean_f1_over_splits():
    questions = [_q(1, "random", "cat"), _q(2, "random", "dog"),
                 _q(3, "popular", "cat"), _q(4, "popular", "dog")]
    labels = {"random": [_label("cat", "yes"), _label("dog", "no")],
              "popular": [_label("dog", "no"), _label("cat", "yes")]}  # order does not matter
    answers = [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "No"},
               {"question_id": 3, "text": "Yes"}, {"question_id": 4, "text": "Yes"}]
    res = pope.score(answers, questions, labels)
    # random: perfect -> F1 1; popular: TP 1, FP 1 -> P 1/2, R 1, F1 2/3. Mean = 5/6.
    assert res["headline"] == pytest.approx(100 * 5 / 6)
    assert res["metrics"]["splits"] == ["popular", "random"]
    assert "mean F1" in res["metrics"]["convention"]


def test_score_label_lookup_errors():
    with pytest.raises(ValueError, match="no label"):
        pope.score([{"question_id": 1, "text": "Yes"}], [_q(1, "adversarial", "cat")],
                   {"random": [_label("cat", "yes")]})
