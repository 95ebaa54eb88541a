"""SEED-Bench (v1): accuracy on the image questions, overall and per question type.

Official metric (Li et al. 2023, "SEED-Bench: Benchmarking Multimodal LLMs with Generative
Comprehension"; LLaVA's ``convert_seed_for_submission.py``): a question is right when the
chosen letter equals ``answer`` in ``SEED-Bench.json``; accuracy per ``question_type_id``
(named through the file's ``question_type`` map) and overall. LLaVA-1.5 reports the image
part (``data_type == "image"``, 14,233 questions, dimensions 1-9), so headline = image
accuracy % (LLaVA-1.5-7B: 58.6). Answers to video questions are ignored here (counted in
``n_ignored_video``). LLaVA compares the raw answer text with the letter; we read the letter
with :func:`choices.parse_option_letter`, which also accepts "B." or "B. text" (same result
for LLaVA-1.5's bare-letter answers); unreadable answers are wrong (``n_unparsed``).

``--submission-file`` writes the leaderboard JSONL ``{"question_id", "prediction"}`` (one
line per answered question, in the annotation order, raw answer text as LLaVA writes it).

CLI::

    python -m llava.eval.scoring.seed --answers-file A.jsonl [...]
        --annotation-file SEED-Bench.json [--submission-file answers_upload/MODEL.jsonl]
        [--result-file OUT.json] [--allow-missing]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from llava.eval.scoring import scoring_io
from llava.eval.scoring.choices import parse_option_letter

BENCHMARK = "seed"
CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")


def score(answers: list[dict], annotation: dict, *, allow_missing: bool = False) -> dict:
    """``annotation``: SEED-Bench.json (``{"question_type": {...}, "questions": [...]}``)."""
    type_name = {int(v): k for k, v in annotation["question_type"].items()}
    questions = {str(q["question_id"]): q for q in annotation["questions"]}
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    unknown = [q for q in by_id if q not in questions]
    if unknown:
        raise ValueError(f"{len(unknown)} answers are for ids not in SEED-Bench.json, "
                         f"e.g. {unknown[:5]}")
    image_ids = [qid for qid, q in questions.items() if q["data_type"] == "image"]
    image_answers = {qid: a for qid, a in by_id.items() if questions[qid]["data_type"] == "image"}
    scored = scoring_io.check_coverage(image_ids, image_answers, allow_missing=allow_missing,
                                       what=f"{BENCHMARK} image")
    right = unparsed = 0
    per_type: dict[int, list[int]] = defaultdict(list)
    for qid in scored:
        q = questions[qid]
        letter = parse_option_letter(by_id[qid]["text"], len(CHOICE_KEYS),
                                     [q[k] for k in CHOICE_KEYS])
        unparsed += letter is None
        ok = int(letter == q["answer"])
        right += ok
        per_type[int(q["question_type_id"])].append(ok)
    acc = scoring_io.percent(right, len(scored))
    metrics = {
        "image_accuracy": acc,
        "accuracy_per_question_type": {type_name.get(t, str(t)): scoring_io.percent(sum(v), len(v))
                                       for t, v in sorted(per_type.items())},
        "n_unparsed": unparsed,
        "n_ignored_video": len(by_id) - len(image_answers),
        "n_missing": len(image_ids) - len(scored),
        "convention": "headline = accuracy (%) on the SEED-Bench image questions",
    }
    return scoring_io.make_result(BENCHMARK, acc, metrics, len(scored))


def submission(answers: list[dict], annotation: dict) -> list[dict]:
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    return [{"question_id": q["question_id"], "prediction": by_id[str(q["question_id"])]["text"]}
            for q in annotation["questions"] if str(q["question_id"]) in by_id]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--annotation-file", required=True, help="SEED-Bench.json")
    parser.add_argument("--submission-file", help="write the leaderboard JSONL here")
    args = parser.parse_args(argv)
    answers = scoring_io.read_jsonl(args.answers_file)
    annotation = scoring_io.read_json(args.annotation_file)
    result = score(answers, annotation, allow_missing=args.allow_missing)
    if args.submission_file:
        scoring_io.write_jsonl(args.submission_file, submission(answers, annotation))
    scoring_io.report(result, args.result_file, [
        f"{t}: {v:.1f}" for t, v in result["metrics"]["accuracy_per_question_type"].items()])
    return result


if __name__ == "__main__":
    main()
