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


# ----------------------------------------------------------------------------- official rules
# Each case below is worked out by hand from the official pipeline: LLaVA's converter
# (EvalAIAnswerProcessor: lower, drop , ?, "'s" -> " 's", punctuation, <= 32 periods not
# before a digit, number words, articles, contractions) writes the answer; vqaEval.py then
# strips it and, ONLY if the 10 human answers are not all equal, runs its processPunctuation
# + processDigitArticle on the humans and on the written answer; leave-one-out, min(1, m/3).


def _records(*groups):
    """10 official answer records (answer_id 1..10) from ("answer", count) groups."""
    answers = [a for a, n in groups for _ in range(n)]
    assert len(answers) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
            for i, a in enumerate(answers)]


def _ann(*groups, answer_type="other", question_type="what"):
    recs = _records(*groups)
    return {"answers": [r["answer"] for r in recs], "answer_records": recs,
            "answer_type": answer_type, "question_type": question_type}


def _one(text, *groups, parser="official"):
    res = vqav2.score([_ans(7, text)], {7: _ann(*groups)}, parser=parser)
    return res["headline"], (res["lenient"]["headline"] if parser == "lenient" else None)


@pytest.mark.parametrize("text, groups, official, lenient", [
    # Humans agree on "t-shirt": vqaEval does not normalise them; the converter wrote "t shirt"
    # ("-" touches no space -> a space) != "t-shirt" -> 0. m4c normalises both: 10 matches.
    ("t-shirt", (("t-shirt", 10),), 0.0, 100.0),
    # One human differs ("shirt"): now vqaEval normalises the humans ("t-shirt" -> "t shirt",
    # 9 of them) and the written "t shirt" (unchanged): every subset keeps >= 8 -> 1.
    ("t-shirt", (("t-shirt", 9), ("shirt", 1)), 100.0, 100.0),
    # Humans agree on "yes"; "Yes." -> converter "yes" (lower case, final period out): 1.
    ("Yes.", (("yes", 10),), 100.0, 100.0),
    # Contractions: the converter writes "It's" as "it 's"; the humans disagree, but vqaEval
    # neither splits "'s" nor has "it's" in its table, so "it's" stays: no match -> 0.
    # m4c splits the humans' "'s" too: 4 matches -> 1.
    ("It's", (("it's", 4), ("no", 6)), 0.0, 100.0),
    # "dont" -> converter "don't" (table); vqaEval leaves "don't": 5 of 10 match -> 1.
    ("dont", (("don't", 5), ("no", 5)), 100.0, 100.0),
    # Digits and articles: "The two" -> "2"; 3 of 10 say "2": 3 subsets keep 2 (2/3 each),
    # 7 keep 3 (1 each): (2 + 7) / 10 = 0.9.
    ("The two", (("2", 3), ("3", 7)), 90.0, 90.0),
    # Periods: the one before "5" stays, the final one goes: "3.5" matches 4 humans -> 1.
    ("3.5.", (("3.5", 4), ("4", 6)), 100.0, 100.0),
    # Punctuation touching a space is deleted: "red !" -> "red" ; humans 2 x "red": 0.6.
    ("red !", (("red", 2), ("blue", 8)), 60.0, 60.0),
])
def test_official_rules_hand_derived(text, groups, official, lenient):
    got_official, got_lenient = _one(text, *groups, parser="lenient")
    assert got_official == pytest.approx(official)
    assert got_lenient == pytest.approx(lenient)
    assert _one(text, *groups)[0] == got_official  # the default is the official figure


@pytest.mark.parametrize("n_periods, groups, expected", [
    # 40 periods: the converter's re.sub deletes only 32 (re.UNICODE = 32 passed as count),
    # "yes" + 8 periods is written. Humans agree -> compared as is -> 0.
    (40, (("yes", 10),), 0.0),
    # Humans disagree -> vqaEval's own pass deletes the other 8: "yes" matches 9 -> 1.
    (40, (("yes", 9), ("no", 1)), 100.0),
    # 70 periods: 32 + 32 go, "yes" + 6 periods stays even when the humans disagree -> 0.
    (70, (("yes", 9), ("no", 1)), 0.0),
])
def test_official_32_period_cap(n_periods, groups, expected):
    assert _one("yes" + "." * n_periods, *groups)[0] == pytest.approx(expected)


def test_official_per_question_type_and_default_keys():
    ann = {1: _ann(("yes", 10), answer_type="yes/no", question_type="is the"),
           2: _ann(("2", 2), ("3", 8), answer_type="number", question_type="how many"),
           3: _ann(("red", 10), question_type="is the")}
    res = vqav2.score([_ans(1, "Yes"), _ans(2, "two"), _ans(3, "blue")], ann)
    # 1 -> 1; "two" -> "2", 2 of 10 -> 0.6; 3 -> 0.  "is the": (1 + 0) / 2 = 50%.
    assert res["headline"] == pytest.approx(160 / 3)
    assert res["metrics"]["accuracy_per_question_type"] == pytest.approx(
        {"how many": 60.0, "is the": 50.0})
    assert set(res) == {"benchmark", "headline", "metrics", "n"}


def test_lenient_result_keeps_official_headline():
    res = vqav2.score([_ans(7, "t-shirt")], {7: _ann(("t-shirt", 10))}, parser="lenient")
    assert set(res) == {"benchmark", "headline", "metrics", "n", "parser", "lenient"}
    assert res["parser"] == "lenient"
    assert res["headline"] == 0.0 and res["metrics"]["accuracy"] == 0.0
    assert set(res["lenient"]) == {"headline", "metrics", "n"}
    assert res["lenient"]["headline"] == 100.0 and res["lenient"]["n"] == 1


def test_id_type_mismatch_is_refused():
    # The converter looks the question file's int 1 up among the answers' ids; "1" is not it.
    with pytest.raises(ValueError, match="looks up 1"):
        vqav2.score([_ans("1", "yes")], ANN, allow_missing=True)
    with pytest.raises(ValueError, match="looks up 1"):
        vqav2.submission([_ans("1", "yes")], [1])


def test_cli_parser_flag(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"annotations": [
        {"question_id": 7, "answer_type": "other", "question_type": "what",
         "answers": _records(("t-shirt", 10))}]}))
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps(_ans(7, "t-shirt")) + "\n")
    out = tmp_path / "r.json"
    vqav2.main(["--answers-file", str(a), "--annotation-file", str(ann), "--result-file", str(out)])
    assert json.loads(out.read_text())["headline"] == 0.0
    vqav2.main(["--answers-file", str(a), "--annotation-file", str(ann), "--result-file", str(out),
                "--parser", "lenient"])
    saved = json.loads(out.read_text())
    assert saved["headline"] == 0.0 and saved["parser"] == "lenient"
    assert saved["lenient"]["headline"] == 100.0
