"""ScienceQA scorer: letter parsing, accuracy and IMG-accuracy (scoring/scienceqa.py)."""

import json

import pytest

from llava.eval.scoring import scienceqa

PROBLEMS = {
    "1": {"choices": ["a", "b"], "answer": 1, "image": "image.png", "subject": "natural science"},
    "2": {"choices": ["a", "b", "c"], "answer": 0, "image": "image.png", "subject": "natural science"},
    "3": {"choices": ["a", "b"], "answer": 0, "image": None, "subject": "language science"},
    "4": {"choices": ["a", "b"], "answer": 1, "image": None, "subject": "social science"},
    "9": {"choices": ["a", "b"], "answer": 1, "image": None, "subject": "social science"},
}
TEST = ["1", "2", "3", "4"]


def _ans(pid, text):
    # model_vqa_science puts "<image>\n" first in the prompt of the problems with an image
    prompt = "<image>\nq" if PROBLEMS.get(str(pid), {}).get("image") else "q"
    return {"question_id": pid, "prompt": prompt, "text": text}


def test_score_hand_derived():
    answers = [_ans("1", "The answer is B."),   # right (image)
               _ans("2", "C"),                  # wrong (image)
               _ans("3", "A. a"),               # right
               _ans("4", "C")]                  # read as C, but only A, B exist: wrong
    res = scienceqa.score(answers, PROBLEMS, TEST)
    assert res["headline"] == 50.0                    # IMG: 1 of 2
    assert res["metrics"]["accuracy"] == 50.0         # all: 2 of 4
    assert res["metrics"]["n_failed"] == 0            # every text was read as some letter
    assert res["metrics"]["accuracy_per_subject"] == {"language science": 100.0,
                                                      "natural science": 50.0,
                                                      "social science": 0.0}
    assert set(res) == {"benchmark", "headline", "metrics", "n"}


@pytest.mark.parametrize("text, letter", [
    # eval_science_qa.py, options A-E: (1) the whole text is a letter
    ("A", "A"), ("E", "E"),
    # (2) >= 3 characters, a letter, then ". "
    ("B. dog", "B"), ("C. ", "C"),
    # (3) r'The answer is ([A-Z]).' found exactly once; "." is any character
    ("The answer is B.", "B"),
    ("Because ... The answer is D, clearly", "D"),
    ("The answer is Clock.", "C"),   # "C" then "l" matches "([A-Z])."
    ("The answer is AB", "A"),
    # everything else is FAILED
    ("B.", None),                     # 2 characters, and no "The answer is"
    ("B.dog", None), ("(B)", None), ("B)", None), ("b", None), (" B", None), ("B\n", None),
    ("The answer is B", None),        # nothing after the letter for the regex dot
    ("the answer is B.", None),       # case-sensitive
    ("Answer: B", None),
    ("The answer is (B).", None),
    ("The answer is A. The answer is B.", None),  # two matches
    ("F", None), ("", None),
])
def test_official_letter_forms(text, letter):
    assert scienceqa.official_letter(text) == letter


def test_answer_is_clock_depends_on_the_options():
    # "The answer is Clock." reads "C": right on a 3-choice problem whose answer is C
    # (index 2); with 2 choices C is outside options[:2] -> index -1 -> wrong.
    problems = {"1": {"choices": ["watch", "cup", "clock"], "answer": 2, "image": "x.png"},
                "2": {"choices": ["clock", "cup"], "answer": 0, "image": "x.png"}}
    answers = [{"question_id": p, "prompt": "<image>\nq", "text": "The answer is Clock."}
               for p in ("1", "2")]
    res = scienceqa.score(answers, problems, ["1", "2"], parser="lenient")
    assert res["headline"] == 50.0
    # our parser reads no letter from "Clock" (it is a word): both wrong, 2 unreadable
    assert res["lenient"]["headline"] == 0.0 and res["lenient"]["metrics"]["n_failed"] == 2


def test_forms_we_used_to_accept_now_fail():
    # All four problems are right under the lenient parser, all wrong officially.
    problems = {str(i): {"choices": ["x", "y"], "answer": 1, "image": "x.png"}
                for i in range(4)}
    texts = ["(B)", "B.", "Answer: B", "the answer is B"]
    answers = [{"question_id": str(i), "prompt": "<image>\nq", "text": t}
               for i, t in enumerate(texts)]
    res = scienceqa.score(answers, problems, list(problems), parser="lenient")
    assert res["headline"] == 0.0 and res["metrics"]["n_failed"] == 4
    assert res["lenient"]["headline"] == 100.0


def test_img_flag_from_prompt_officially():
    # LLaVA's IMG test is '<image>' in the answer's prompt; problems.json is what lenient uses.
    # Problem 1 has an image, but its prompt lacks the marker: officially not an IMG problem,
    # so IMG = problem 2 alone (wrong: 0); lenient IMG = 1 right of 2 = 50.
    answers = [{"question_id": "1", "prompt": "q", "text": "B"},
               {"question_id": "2", "prompt": "<image>\nq", "text": "B"},
               _ans("3", "A"), _ans("4", "B")]
    res = scienceqa.score(answers, PROBLEMS, TEST, parser="lenient")
    assert res["headline"] == 0.0 and res["metrics"]["n_img"] == 1
    assert res["lenient"]["headline"] == 50.0 and res["lenient"]["metrics"]["n_img"] == 2


def test_int_question_ids_are_refused():
    # LLaVA looks answers up by the problem-id strings: an int 1 would be FAILED.
    with pytest.raises(ValueError, match="looks up '1'"):
        scienceqa.score([_ans(1, "B")], PROBLEMS, TEST, allow_missing=True)


def test_split_membership():
    with pytest.raises(ValueError, match="not in"):
        scienceqa.score([_ans("9", "B")], PROBLEMS, TEST, allow_missing=True)
    with pytest.raises(ValueError, match="no answer"):
        scienceqa.score([_ans("1", "B")], PROBLEMS, TEST)


def test_cli(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": TEST, "val": ["9"]}))
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(_ans(p, t)) + "\n" for p, t in
                         [("1", "B"), ("2", "A"), ("3", "A"), ("4", "B")]))
    res = scienceqa.main(["--answers-file", str(a), "--base-dir", str(tmp_path)])
    assert res["headline"] == 100.0
    with pytest.raises(ValueError, match="choose from"):
        scienceqa.main(["--answers-file", str(a), "--base-dir", str(tmp_path), "--split", "dev"])
