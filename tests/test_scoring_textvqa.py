"""TextVQA scorer: matching LLaVA's image-id question ids, soft accuracy (scoring/textvqa.py)."""

import pytest

from llava.eval.scoring import textvqa

ANN = [
    {"question_id": 10, "image_id": "aa", "question": "what brand is it?",
     "answers": ["nike"] * 10},
    {"question_id": 11, "image_id": "aa", "question": "what color is the logo?",
     "answers": ["white"] * 3 + ["black"] * 7},
    {"question_id": 12, "image_id": "bb", "question": "what year is it?",
     "answers": ["1999"] * 10},
]


def _ans(qid, prompt, text):
    return {"question_id": qid, "prompt": prompt, "text": text}


def test_score_matches_image_and_question():
    ocr = "\nReference OCR token: NIKE\nAnswer the question using a single word or phrase."
    answers = [
        _ans("aa", "What brand is it?" + ocr, "Nike"),              # 1.0
        _ans("aa", "What color is the logo?" + ocr, "white"),       # 3 of 10 -> 0.9
        _ans(12, "anything", "2000"),                               # matched by id -> 0
    ]
    res = textvqa.score(answers, ANN)
    assert res["headline"] == pytest.approx(100 * 1.9 / 3)
    assert res["n"] == 3


def test_ocr_tokens_prompt_format():
    prompt = "OCR tokens: NIKE Question: What brand is it? Short answer:"
    assert textvqa.prompt_question(prompt) == "what brand is it?"
    assert textvqa.prompt_question("Two lines?\nAnswer briefly.") == "two lines?"


def test_unmatched_and_missing():
    with pytest.raises(ValueError, match="matches no TextVQA question"):
        textvqa.score([_ans("zz", "What brand is it?", "x")], ANN, allow_missing=True)
    with pytest.raises(ValueError, match="no answer"):
        textvqa.score([_ans(12, "q", "1999")], ANN)
    assert textvqa.score([_ans(12, "q", "1999")], ANN, allow_missing=True)["headline"] == 100.0


REPEATED = [
    {"question_id": 1, "image_id": "cc", "question": "what is it?", "answers": ["a"] * 10},
    {"question_id": 2, "image_id": "cc", "question": "What is it?", "answers": ["b"] * 10},
]


def test_repeated_pair_scored_against_last_annotation():
    # LLaVA keys the annotations by (image_id, question.lower()) in a dict: the pair
    # ("cc", "what is it?") ends up holding question 2's answers (all "b"). Both answers are
    # scored against them: "a" -> 0, "b" -> 1: 100 * (1 / 2) = 50.
    answers = [_ans("cc", "What is it?", "a"), _ans("cc", "What is it?", "b")]
    res = textvqa.score(answers, REPEATED)
    assert res["headline"] == 50.0 and res["n"] == 2
    assert res["metrics"]["n_scored_against_last_of_repeated_pair"] == 1
    assert set(res) == {"benchmark", "headline", "metrics", "n"}
    # Lenient: paired in order, the first answer with question 1 ("a" x 10): (1 + 1) / 2.
    res = textvqa.score(answers, REPEATED, parser="lenient")
    assert res["headline"] == 50.0 and res["parser"] == "lenient"
    assert res["lenient"]["headline"] == 100.0 and res["lenient"]["n"] == 2


def test_repeated_pair_coverage_is_per_question():
    with pytest.raises(ValueError, match="more answers"):
        textvqa.score([_ans("cc", "What is it?", "a")] * 3, REPEATED)
    with pytest.raises(ValueError, match="no answer"):
        textvqa.score([_ans("cc", "What is it?", "b")], REPEATED)
    # One answer, allowed: scored against the last annotation ("b" x 10) -> 100.
    res = textvqa.score([_ans("cc", "What is it?", "b")], REPEATED, allow_missing=True)
    assert res["headline"] == 100.0


@pytest.mark.parametrize("prompt, question", [
    # LLaVA's prompt_processor: 3 lines with a "Reference OCR token: " line -> line 1, or
    # line 2 when the prompt starts with that line; 2 lines -> line 1; lower case, no strip.
    ("What brand?\nReference OCR token: NIKE\nAnswer the question using a single word or phrase.",
     "what brand?"),
    ("Reference OCR token: NIKE\nWhat Brand?\nAnswer the question using a single word or phrase.",
     "what brand?"),
    ("What Brand? \nAnswer briefly.", "what brand? "),
    ("OCR tokens: NIKE Question: What Brand? Short answer:", "what brand?"),
])
def test_prompt_processor_rule(prompt, question):
    assert textvqa.prompt_question(prompt) == question


def test_prompt_question_with_trailing_space_still_matches():
    # LLaVA would raise KeyError on "what brand is it? " (no official figure); we fall back
    # to the stripped question.
    res = textvqa.score([_ans("aa", "What brand is it? \nShort.", "nike")], ANN,
                        allow_missing=True)
    assert res["headline"] == 100.0
