"""MME scorer: yes/no parsing, acc and acc+, perception + cognition (scoring/mme.py)."""

import pytest

from llava.eval.scoring import mme

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("No.", "no"),
    ("Not really", "no"),          # "not " holds "no" in its first 4 characters
    ("I think yes", "other"),      # "i th": neither
    ("Nobody", "no"),
])
def test_parse_yes_no(text, expected):
    assert mme.parse_yes_no(text) == expected


def _write_gt(root, subtask, stem, qas, images_layout=False):
    qa_dir = root / subtask / ("questions_answers_YN" if images_layout else "")
    qa_dir.mkdir(parents=True, exist_ok=True)
    if images_layout:
        (root / subtask / "images").mkdir(exist_ok=True)
    (qa_dir / f"{stem}.txt").write_text("".join(f"{q} Please answer yes or no.\t{a}\n"
                                                for q, a in qas))


def _ans(qid, question, text):
    return {"question_id": qid, "prompt": question + SUFFIX, "text": text}


@pytest.fixture
def gt(tmp_path):
    _write_gt(tmp_path, "color", "1", [("Is it red?", "Yes"), ("Is it blue?", "No")])
    _write_gt(tmp_path, "color", "2", [("Is it green?", "Yes"), ("Is it pink?", "No")])
    _write_gt(tmp_path, "celebrity", "7", [("Is he Bob?", "Yes"), ("Is he Tom?", "No")],
              images_layout=True)
    _write_gt(tmp_path, "text_translation", "3", [("Is it hello?", "Yes"), ("Is it bye?", "No")])
    return mme.load_ground_truth(str(tmp_path))


def test_acc_plus_and_totals(gt):
    answers = [
        _ans("color/1.jpg", "Is it red?", "Yes"), _ans("color/1.jpg", "Is it blue?", "No"),
        _ans("color/2.jpg", "Is it green?", "Yes"), _ans("color/2.jpg", "Is it pink?", "Yes"),
        _ans("celebrity/images/7.jpg", "Is he Bob?", "maybe"),
        _ans("celebrity/images/7.jpg", "Is he Tom?", "No"),
        _ans("text_translation/3.png", "Is it hello?", "Yes"),
        _ans("text_translation/3.png", "Is it bye?", "No"),
    ]
    res = mme.score(answers, gt)
    per = res["metrics"]["per_subtask"]
    # color: 3 of 4 questions right -> acc 75; image 1 both right, image 2 not -> acc+ 50
    assert per["color"]["acc"] == 75.0 and per["color"]["acc_plus"] == 50.0
    assert per["color"]["score"] == 125.0
    # celebrity: "maybe" is "other" (wrong) -> acc 50, acc+ 0 -> 50
    assert per["celebrity"]["score"] == 50.0 and per["celebrity"]["n_other"] == 1
    # text_translation (cognition): both right -> 200
    assert per["text_translation"]["score"] == 200.0
    assert res["metrics"]["perception"] == 175.0
    assert res["metrics"]["cognition"] == 200.0
    assert res["headline"] == 375.0
    assert "count" in res["metrics"]["subtasks_missing"]


def test_missing_and_unmatched(gt):
    only_color = [_ans("color/1.jpg", "Is it red?", "Yes"), _ans("color/1.jpg", "Is it blue?", "No")]
    with pytest.raises(ValueError, match="no answer"):
        mme.score(only_color, gt)
    res = mme.score(only_color, gt, allow_missing=True)
    assert res["headline"] == 200.0 and res["n"] == 2
    with pytest.raises(ValueError, match="matches no MME"):
        mme.score([_ans("color/1.jpg", "Is it purple?", "Yes")], gt, allow_missing=True)


def test_bad_ground_truth_line(tmp_path):
    (tmp_path / "count").mkdir()
    (tmp_path / "count" / "1.txt").write_text("How many? Please answer yes or no.\tThree\n")
    with pytest.raises(ValueError, match="Yes|No"):
        mme.load_ground_truth(str(tmp_path))
