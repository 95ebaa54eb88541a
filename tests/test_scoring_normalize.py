"""The official VQA answer processing and soft accuracy (llava/eval/scoring/vqa_normalize.py)."""

import pytest

from llava.eval.scoring.vqa_normalize import (api_normalize, api_process_punctuation,
                                              m4c_accuracy, normalize_answer,
                                              soft_accuracy_from_matches, vqa_api_accuracy,
                                              vqa_soft_accuracy)


@pytest.mark.parametrize("raw, expected", [
    # contractions: the apostrophe comes back, including the table's reversed entry
    ("dont", "don't"),
    ("Whats", "what's"),
    ("isnt it", "isn't it"),
    ("somebody'd", "somebodyd"),
    # number words (the manual map) become digits; others stay words
    ("Two", "2"),
    ("none", "0"),
    ("ten dogs", "10 dogs"),
    ("eleven", "eleven"),
    # articles go, words that merely start like one stay
    ("The dog", "dog"),
    ("a an the cat", "cat"),
    ("theater", "theater"),
    # punctuation: replaced by a space unless it touches a space (then deleted)
    ("yes!", "yes"),
    ("left-handed", "left handed"),
    ("a - b", "b"),            # " -" touches a space: deleted -> "a  b" -> article dropped
    ("(red)", "red"),
    ("10/20", "10 20"),
    # commas vanish in tokenisation, so digit groups join
    ("1,000", "1000"),
    ("hello, world", "hello world"),
    # periods: kept before a digit, deleted otherwise
    ("3.5", "3.5"),
    ("Two dogs.", "2 dogs"),
    ("e.g. this", "eg this"),
    # "'s" is split off; newlines and tabs are spaces
    ("man's hat", "man 's hat"),
    ("red\tcar\n", "red car"),
    ("Unanswerable", "unanswerable"),
])
def test_normalize_answer_rules(raw, expected):
    assert normalize_answer(raw) == expected


def test_period_limit_matches_official_quirk():
    # The official code passes re.UNICODE (32) as re.sub's count: only 32 periods go.
    assert normalize_answer("x" + "." * 40) == "x" + "." * 8


def test_normalize_rejects_non_str():
    with pytest.raises(ValueError, match="str"):
        normalize_answer(None)


def _explicit_leave_one_out(pred, humans):
    """Second, literal implementation: average over the 10 subsets of 9 answers."""
    accs = []
    for i in range(len(humans)):
        others = humans[:i] + humans[i + 1:]
        accs.append(min(1.0, sum(h == pred for h in others) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("m", range(11))
def test_closed_form_equals_leave_one_out(m):
    humans = ["yes"] * m + ["no"] * (10 - m)
    assert soft_accuracy_from_matches(m, 10) == pytest.approx(_explicit_leave_one_out("yes", humans))


def test_soft_accuracy_hand_values():
    # 2 of 10 humans match: the 2 subsets that leave out a matching human keep 1 match
    # (1/3 each), the 8 others keep 2 (2/3 each): (2/3 + 16/3) / 10 = 0.6.
    assert vqa_soft_accuracy("2", ["2", "two"] + ["3"] * 8) == pytest.approx(0.6)
    # 1 match: 1 subset with 0 matches, 9 with 1 (1/3): 3/10.
    assert vqa_soft_accuracy("42", ["42"] + ["24"] * 9) == pytest.approx(0.3)
    # 3 matches: 3 subsets with 2 (2/3), 7 with 3 (1): (2 + 7) / 10 = 0.9.
    assert vqa_soft_accuracy("Triangle", ["triangle", "the triangle", "triangle."] + ["x"] * 7) \
        == pytest.approx(0.9)
    # 4 or more matches: every subset keeps >= 3.
    assert vqa_soft_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0
    assert vqa_soft_accuracy("blue", ["red"] * 10) == 0.0


def test_soft_accuracy_bad_input():
    with pytest.raises(ValueError, match="empty"):
        vqa_soft_accuracy("red", [])
    with pytest.raises(ValueError, match="matches"):
        soft_accuracy_from_matches(11, 10)


# ----------------------------------------------------------------------------- VQA API variant
@pytest.mark.parametrize("raw, expected", [
    # vqaEval.py has no tokenisation step: "'s" is not split ...
    ("man's hat", "man's hat"),
    # ... its digit-comma-digit test needs exactly one comma: "1,,2" fails it, so each ","
    # (touching no space) becomes a space -> "1  2" -> "1 2". (EvalAI deletes commas first.)
    ("1,,2", "1 2"),
    ("1,000", "1000"),          # one comma between digits: every punctuation mark deleted
    ("Two Dogs!", "2 dogs"),    # lower-cased in the digit/article step only
    ("The t-shirt.", "t shirt"),
])
def test_api_normalize_rules(raw, expected):
    assert api_normalize(raw) == expected


def test_api_and_evalai_differ_where_the_official_codes_do():
    assert normalize_answer("man's hat") == "man 's hat"
    assert normalize_answer("1,,2") == "12"


def test_api_period_limit():
    assert api_process_punctuation("x" + "." * 40) == "x" + "." * 8


def _recs(*answers, ids=True):
    return [{"answer": a, **({"answer_id": i + 1} if ids else {})}
            for i, a in enumerate(answers)]


def test_vqa_api_accuracy_normalises_only_when_humans_disagree():
    # All 10 "yes": nothing is normalised, so "Yes" (not lower-cased) matches nobody.
    assert vqa_api_accuracy("Yes", _recs(*["yes"] * 10)) == 0.0
    assert vqa_api_accuracy(" yes\n", _recs(*["yes"] * 10)) == 1.0  # outer whitespace goes
    # "Yes!" among 9 "yes": they disagree, so all are normalised ("Yes!" -> "yes") and so is
    # the prediction: 10 matches -> 1.
    assert vqa_api_accuracy("Yes!", _recs(*["yes"] * 9, "Yes!")) == 1.0


def test_vqa_api_accuracy_leave_one_out_by_record_equality():
    # 3 "red" + 7 "blue", prediction "red".
    # With answer_ids each left-out record removes only itself: a left-out red keeps 2 reds
    # (2/3), a left-out blue keeps 3 (1): (3 * 2/3 + 7) / 10 = 0.9.
    humans = ["red"] * 3 + ["blue"] * 7
    assert vqa_api_accuracy("red", _recs(*humans)) == pytest.approx(0.9)
    assert vqa_api_accuracy("red", humans) == pytest.approx(0.9)  # strings: distinct records
    # Without answer_ids the three red dicts are equal, so leaving one out removes all three
    # (vqaEval's `item != gtAnsDatum`): red left out -> 0, blue left out -> 3 reds -> 1:
    # (3 * 0 + 7 * 1) / 10 = 0.7.
    assert vqa_api_accuracy("red", _recs(*humans, ids=False)) == pytest.approx(0.7)


def test_m4c_accuracy_hand_values():
    # Everything through the EvalAI processor: "The triangle." -> "triangle", 3 matches -> 0.9.
    assert m4c_accuracy("The triangle.", ["triangle", "the triangle", "Triangle"] + ["x"] * 7) \
        == pytest.approx(0.9)
    assert m4c_accuracy("square", ["triangle"] * 10) == 0.0
