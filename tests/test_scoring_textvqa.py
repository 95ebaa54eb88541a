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


def test_repeated_image_question_pairs_get_one_answer_each():
    ann = [{"question_id": 1, "image_id": "cc", "question": "what is it?", "answers": ["a"] * 10},
           {"question_id": 2, "image_id": "cc", "question": "what is it?", "answers": ["b"] * 10}]
    # The first answer goes to question 1, the second to question 2: (1 + 1) / 2.
    res = textvqa.score([_ans("cc", "What is it?", "a"), _ans("cc", "What is it?", "b")], ann)
    assert res["headline"] == 100.0 and res["n"] == 2
    with pytest.raises(ValueError, match="more answers"):
        textvqa.score([_ans("cc", "What is it?", "a")] * 3, ann)
