"""SEED-Bench scorer: LLaVA's exact-letter rule, Total / image / video accuracy (scoring/seed.py).

Expected values are worked out from LLaVA's convert_seed_for_submission.py: a question is right
iff the answer text == its letter; accuracy per question_type_id and Total over every question
of SEED-Bench.json (image and video), each right / count * 100; questions looked up as
int(question_id) among the answers' ids as they are.
"""

import json

import pytest

from llava.eval.scoring import seed


def _q(qid, answer, type_id, data_type="image"):
    return {"question_id": qid, "answer": answer, "question_type_id": type_id,
            "data_type": data_type, "choice_a": "one", "choice_b": "two", "choice_c": "three",
            "choice_d": "four", "question": "q", "data_id": f"{qid}.jpg"}


# As released: SEED-Bench.json ids are digit strings (LLaVA's question file has them as ints).
ANNOTATION = {"question_type": {"Scene Understanding": 1, "Instances Counting": 5,
                                "Action Recognition": 10},
              "questions": [_q("1", "A", 1), _q("2", "B", 5), _q("3", "C", 5),
                            _q("4", "D", 10, "video")]}


def _ans(qid, text):
    return {"question_id": qid, "prompt": "p", "text": text}


def test_score_hand_derived():
    # 1 "A" right; 2 "B." != "B" wrong; 3 "D" wrong; 4 (video) "D" right.
    # Total 2/4 = 50; image 1/3; video 1/1; per type: 1 -> 100, 5 -> 0/2, 10 -> 100.
    answers = [_ans(1, "A"), _ans(2, "B."), _ans(3, "D"), _ans(4, "D")]
    res = seed.score(answers, ANNOTATION)
    assert res["headline"] == 50.0 and res["n"] == 4
    m = res["metrics"]
    assert m["image_accuracy"] == pytest.approx(100 / 3)
    assert m["video_accuracy"] == 100.0
    assert m["accuracy_per_question_type"] == {"Scene Understanding": 100.0,
                                               "Instances Counting": 0.0,
                                               "Action Recognition": 100.0}
    assert m["n_image"] == 3 and m["n_video"] == 1 and m["n_not_a_bare_letter"] == 1
    assert set(res) == {"benchmark", "headline", "metrics", "n"}


@pytest.mark.parametrize("text, right", [
    ("A", True), ("A.", False), (" A", False), ("A\n", False), ("a", False),
    ("A. one", False), ("one", False), ("The answer is A.", False),
])
def test_exact_letter_equality(text, right):
    res = seed.score([_ans(1, text)], ANNOTATION, allow_missing=True)
    assert res["headline"] == (100.0 if right else 0.0)


def test_lenient_reads_more_forms():
    # Lenient: "B." -> B right, "three" = option C right, "D" wrong, video "D" right: 3/4.
    answers = [_ans(1, "A."), _ans(2, "B."), _ans(3, "three"), _ans(4, "D")]
    res = seed.score(answers, ANNOTATION, parser="lenient")
    assert res["headline"] == 25.0          # officially only the video answer is right
    assert res["parser"] == "lenient"
    assert res["lenient"]["headline"] == 100.0
    assert res["lenient"]["metrics"]["image_accuracy"] == 100.0


def test_string_ids_are_refused():
    # LLaVA looks question "1" up as int 1; an answer keyed "1" would score 0 there.
    with pytest.raises(ValueError, match="looks up 1 \\(int\\)"):
        seed.score([_ans("1", "A")], ANNOTATION, allow_missing=True)


def test_non_numeric_ids_stay_strings():
    ann = {"question_type": {"Scene Understanding": 1},
           "questions": [_q("v_1", "A", 1), _q("7", "B", 1)]}
    res = seed.score([_ans("v_1", "A"), _ans(7, "B")], ann)
    assert res["headline"] == 100.0


def test_missing_and_unknown():
    with pytest.raises(ValueError, match="no answer"):
        seed.score([_ans(1, "A")], ANNOTATION)
    with pytest.raises(ValueError, match="not in SEED"):
        seed.score([_ans(77, "A")], ANNOTATION, allow_missing=True)


def test_submission_rows_follow_annotation_order():
    rows = seed.submission([_ans(3, "C"), _ans(1, "A")], ANNOTATION)
    assert rows == [{"question_id": "1", "prediction": "A"}, {"question_id": "3", "prediction": "C"}]


def test_cli_parser_flag(tmp_path):
    ann = tmp_path / "SEED-Bench.json"
    ann.write_text(json.dumps(ANNOTATION))
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(_ans(q, t)) + "\n"
                         for q, t in [(1, "A"), (2, "B."), (3, "C"), (4, "D")]))
    out = tmp_path / "r.json"
    seed.main(["--answers-file", str(a), "--annotation-file", str(ann), "--result-file", str(out),
               "--parser", "lenient"])
    saved = json.loads(out.read_text())
    assert saved["headline"] == 75.0 and saved["lenient"]["headline"] == 100.0
    with pytest.raises(SystemExit):
        seed.main(["--answers-file", str(a), "--annotation-file", str(ann), "--parser", "loose"])
