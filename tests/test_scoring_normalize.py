"""The official VQA answer processing and soft accuracy (llava/eval/scoring/vqa_normalize.py)."""

import pytest

from llava.eval.scoring.vqa_normalize import (normalize_answer, soft_accuracy_from_matches,
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
