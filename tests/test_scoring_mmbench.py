"""MMBench scorer: CircularEval over rounds and over circular-copy rows (scoring/mmbench.py)."""

import math

import pytest

from llava.eval.scoring import mmbench

NAN = math.nan


def _row(index, options, answer, category="cat_a"):
    row = {"index": index, "question": "q", "hint": NAN, "answer": answer, "category": category,
           "l2-category": "L2"}
    for i, letter in enumerate("ABCD"):
        row[letter] = options[i] if i < len(options) else NAN
    return row


def _ans(index, text, round_id=0, **extra):
    return {"question_id": index, "round_id": round_id, "text": text, **extra}


def test_all_rounds_one_rotation_wrong():
    # Q0: options (x, y, z), answer B (= "y"). Round r shows the options rotated left by r,
    # so "y" is letter B in round 0, A in round 1, C in round 2.
    # Q1: options (p, q), answer A (= "p"): A in round 0, B in round 1.
    rows = [_row(0, ["x", "y", "z"], "B", "cat_a"), _row(1, ["p", "q"], "A", "cat_b")]
    answers = [_ans(0, "B", 0), _ans(0, "A", 1, options=["y", "z", "x"]), _ans(0, "C", 2),
               _ans(1, "A", 0), _ans(1, "A", 1)]  # Q1 round 1 picks "q": wrong
    res = mmbench.score(answers, rows)
    assert res["headline"] == 50.0                          # Q0 right, Q1 wrong
    assert res["metrics"]["single_pass_accuracy"] == 100.0  # both right in round 0
    assert res["metrics"]["accuracy_per_category"] == {"cat_a": 100.0, "cat_b": 0.0}
    assert res["metrics"]["passes_per_question_min"] == 2
    assert res["n"] == 2


def test_circular_copy_rows():
    # The released dev TSV stores rotations as rows index + k * 1e6 with their own answer.
    rows = [_row(5, ["x", "y"], "A"), _row(1_000_005, ["y", "x"], "B")]
    right = mmbench.score([_ans(5, "A"), _ans(1_000_005, "B")], rows)
    wrong = mmbench.score([_ans(5, "A"), _ans(1_000_005, "A")], rows)
    assert right["headline"] == 100.0 and wrong["headline"] == 0.0
    assert wrong["metrics"]["single_pass_accuracy"] == 100.0
    # A copy without its original's answer: the question is incomplete.
    with pytest.raises(ValueError, match="no answer"):
        mmbench.score([_ans(5, "A")], rows)
    with pytest.raises(ValueError, match="all of its circular copies"):
        mmbench.score([_ans(5, "A")], rows, allow_missing=True)


def test_option_text_answer_and_unparsed():
    rows = [_row(0, ["cat", "dog"], "B")]
    assert mmbench.score([_ans(0, "Dog")], rows)["headline"] == 100.0
    res = mmbench.score([_ans(0, "no idea")], rows)
    assert res["headline"] == 0.0 and res["metrics"]["n_unparsed"] == 1


def test_inconsistent_answers_raise():
    rows = [_row(0, ["x", "y", "z"], "A")]
    with pytest.raises(ValueError, match="rounds"):
        mmbench.score([_ans(0, "A", 0), _ans(0, "A", 1)], rows)  # 2 of 3 rounds
    with pytest.raises(ValueError, match="rotating"):
        mmbench.score([_ans(0, "A", 0, options=["y", "z", "x"])], rows)
    with pytest.raises(ValueError, match="without an 'answer'"):
        mmbench.score([_ans(0, "A")], [{**rows[0], "answer": NAN}])


def test_row_options_llava_rule():
    assert mmbench.row_options(_row(0, ["a", "b", "c"], "A")) == ["a", "b", "c"]
    assert mmbench.row_options({"A": "a", "B": "None", "C": "c"}) == ["a"]


def _write_tsv(path, rows):
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
            "source", "l2-category", "comment", "split"]
    path.write_text("\t".join(cols) + "\n" + "".join(
        "\t".join(str(r.get(c, "")) for c in cols) + "\n" for r in rows), encoding="utf-8")


def test_control_characters_do_not_break_the_xlsx(tmp_path, capsys):
    openpyxl = pytest.importorskip("openpyxl")
    tsv = tmp_path / "mmbench_dev.tsv"
    _write_tsv(tsv, [{"index": 0, "question": "q", "A": "x", "B": "y", "answer": "A"},
                     {"index": 1, "question": "q", "A": "x", "B": "y", "answer": "B"}])
    # "\x1f" (and the other C0 controls openpyxl refuses) would raise IllegalCharacterError;
    # our rule deletes them. Tab and newline are legal in a cell and stay.
    answers = [_ans(0, "A\x1f\x00"), _ans(1, "B\tis\nit")]
    out = mmbench.write_submission(answers, str(tsv), str(tmp_path / "up.xlsx"))
    assert out.endswith(".xlsx")
    assert "1 cell(s) held control characters" in capsys.readouterr().out
    sheet = openpyxl.load_workbook(out).active
    header = [c.value for c in sheet[1]]
    col = header.index("prediction")
    assert [row[col].value for row in sheet.iter_rows(min_row=2)] == ["A", "B\tis\nit"]
    # the score reads the same answers without trouble: neither text is a readable letter
    # ("A" is followed by \x1f, not by . ) : or a space/end; "B" by a tab), so both are wrong
    rows = [_row(0, ["x", "y"], "A"), _row(1, ["x", "y"], "B")]
    res = mmbench.score(answers, rows)
    assert res["headline"] == 0.0 and res["metrics"]["n_unparsed"] == 2


def test_xlsx_safe_rule():
    assert mmbench.xlsx_safe("a\x01b\x0bc\x0cd\x1fe") == "abcde"
    assert mmbench.xlsx_safe("keep\t\n\r") == "keep\t\n\r"
    assert mmbench.xlsx_safe(3) == 3


def test_xlsx_rule_is_exactly_what_openpyxl_refuses():
    cell = pytest.importorskip("openpyxl.cell.cell")
    for code in range(0x80):
        ch = chr(code)
        assert (mmbench.xlsx_safe(ch) == "") == (cell.ILLEGAL_CHARACTERS_RE.search(ch) is not None)
