"""Option-letter parsing shared by ScienceQA, MMBench and SEED (scoring/choices.py)."""

import pytest

from llava.eval.scoring.choices import parse_option_letter


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    (" C.\n", "C"),
    ("(A)", "A"),
    ("B. apostrophe", "B"),
    ("C) dog", "C"),
    ("The answer is D.", "D"),
    ("I think the answer is B because ...", "B"),
    ("Answer: A", "A"),
    ("E", None),           # only 4 options
    ("a", None),           # lower case: an article, not a letter
    ("A dog", None),       # leading letter needs . ) or :
    ("I don't know", None),
    ("", None),
])
def test_parse_letter(text, expected):
    assert parse_option_letter(text, 4) == expected


def test_parse_by_option_text():
    opts = ["circle", "square", "triangle"]
    assert parse_option_letter("Square.", 3, opts) == "B"
    assert parse_option_letter("a square", 3, opts) is None  # not exactly one option


def test_parse_bad_arguments():
    with pytest.raises(ValueError, match="n_options"):
        parse_option_letter("A", 0)
    with pytest.raises(ValueError, match="option_texts"):
        parse_option_letter("A", 3, ["x", "y"])
