"""SEED-Bench (v1): accuracy overall, on the image and the video questions, per question type.

Default (``--parser official``) = exactly LLaVA's ``scripts/convert_seed_for_submission.py``:
a question is right **only when the answer text equals its letter exactly** (``"A"`` is right,
``"A."``, ``" A"`` or ``"A. dog"`` are wrong); accuracy per ``question_type_id`` (named through
the file's ``question_type`` map; image dimensions 1-9, video 10-12), over all questions
("Total accuracy"), and over the ``data_type == "image"`` / ``"video"`` questions; each is
right / questions * 100. LLaVA answers the video questions on their middle frame
(``SEED-Bench-video-image/``) and reports the Total accuracy, so headline = Total accuracy %
(LLaVA-1.5-7B: 58.6; its image accuracy is 66.1).

Official quirk, turned into an error here: LLaVA looks each question up as
``int(question_id)`` (the ids of ``SEED-Bench.json`` are strings of digits) in a dict keyed by
the answers' ``question_id`` exactly, so answers with string ids (``"101669"``) score 0.
LLaVA's ``llava-seed-bench.jsonl`` has int ids, which the answers keep; an answers file with
ids of the other type is refused (:func:`scoring_io.check_id_types`) instead of scoring 0.

``--parser lenient`` adds, beside the official figures, our former reading of the letter with
:func:`choices.parse_option_letter` (also ``"B."``, ``"B. text"``, ``"(B)"``, or exactly one
option's text).

``--submission-file`` writes the leaderboard JSONL ``{"question_id", "prediction"}`` as
LLaVA's converter does (one line per answered question, in the annotation order, the
annotation's id, the raw answer text).

CLI::

    python -m llava.eval.scoring.seed --answers-file A.jsonl [...]
        --annotation-file SEED-Bench.json [--submission-file answers_upload/MODEL.jsonl]
        [--result-file OUT.json] [--allow-missing] [--parser official|lenient]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from llava.eval.scoring import scoring_io
from llava.eval.scoring.choices import parse_option_letter

BENCHMARK = "seed"
CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")
LENIENT_HELP = "letters read by our parser ('B.', 'B. text', '(B)', or one option's text)"


def official_id(question_id):
    """The key LLaVA's converter looks a SEED question up by: ``int(id)`` when it parses."""
    try:
        return int(question_id)
    except (TypeError, ValueError):
        return question_id


def _score(by_id: dict, questions: list[dict], scored: set, n_expected: int,
           type_name: dict, official: bool) -> dict:
    counts: dict[str, dict[int, list[int]]] = {"all": defaultdict(list),
                                                "image": defaultdict(list),
                                                "video": defaultdict(list)}
    not_a_letter = 0
    for q in questions:  # LLaVA's order: the annotation's
        qid = str(q["question_id"])
        if qid not in scored:
            continue
        text = by_id[qid]["text"]
        not_a_letter += text not in ("A", "B", "C", "D")
        if official:
            ok = int(text == q["answer"])
        else:
            ok = int(parse_option_letter(text, len(CHOICE_KEYS),
                                         [q[k] for k in CHOICE_KEYS]) == q["answer"])
        t = int(q["question_type_id"])
        counts["all"][t].append(ok)
        if q["data_type"] in ("image", "video"):
            counts[q["data_type"]][t].append(ok)

    def accuracy(per_type: dict) -> float | None:
        total = sum(len(v) for v in per_type.values())
        return sum(sum(v) for v in per_type.values()) / total * 100 if total else None

    total_acc = accuracy(counts["all"])
    metrics = {
        "accuracy": total_acc,
        "image_accuracy": accuracy(counts["image"]),
        "video_accuracy": accuracy(counts["video"]),
        "accuracy_per_question_type": {type_name.get(t, str(t)): sum(v) / len(v) * 100
                                       for t, v in sorted(counts["all"].items())},
        "n_image": sum(len(v) for v in counts["image"].values()),
        "n_video": sum(len(v) for v in counts["video"].values()),
        "n_not_a_bare_letter": not_a_letter,
        "n_missing": n_expected - len(scored),
        "convention": "headline = Total accuracy (%) over the image and video questions "
                      "(LLaVA's SEED figure); image_accuracy = SEED-IMG",
    }
    return scoring_io.make_result(BENCHMARK, total_acc, metrics, len(scored))


def score(answers: list[dict], annotation: dict, *, allow_missing: bool = False,
          parser: str = "official") -> dict:
    """``annotation``: SEED-Bench.json (``{"question_type": {...}, "questions": [...]}``)."""
    if parser not in scoring_io.PARSERS:
        raise ValueError(f"parser must be one of {scoring_io.PARSERS}, got {parser!r}")
    type_name = {int(v): k for k, v in annotation["question_type"].items()}
    questions = annotation["questions"]
    by_qid = {str(q["question_id"]): q for q in questions}
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    scoring_io.check_id_types(answers, [official_id(q["question_id"]) for q in questions],
                              what=BENCHMARK)
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    unknown = [q for q in by_id if q not in by_qid]
    if unknown:
        raise ValueError(f"{len(unknown)} answers are for ids not in SEED-Bench.json, "
                         f"e.g. {unknown[:5]}")
    scored = set(scoring_io.check_coverage(list(by_qid), by_id, allow_missing=allow_missing,
                                           what=BENCHMARK))
    result = _score(by_id, questions, scored, len(by_qid), type_name, official=True)
    if parser == "lenient":
        result = scoring_io.with_lenient(
            result, _score(by_id, questions, scored, len(by_qid), type_name, official=False))
    return result


def submission(answers: list[dict], annotation: dict) -> list[dict]:
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    return [{"question_id": q["question_id"], "prediction": by_id[str(q["question_id"])]["text"]}
            for q in annotation["questions"] if str(q["question_id"]) in by_id]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    scoring_io.add_parser_arg(parser, LENIENT_HELP)
    parser.add_argument("--annotation-file", required=True, help="SEED-Bench.json")
    parser.add_argument("--submission-file", help="write the leaderboard JSONL here")
    args = parser.parse_args(argv)
    answers = scoring_io.read_jsonl(args.answers_file)
    annotation = scoring_io.read_json(args.annotation_file)
    result = score(answers, annotation, allow_missing=args.allow_missing, parser=args.parser)
    if args.submission_file:
        scoring_io.write_jsonl(args.submission_file, submission(answers, annotation))
    m = result["metrics"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"image {fmt(m['image_accuracy'])}, video {fmt(m['video_accuracy'])}"]
    lines += [f"{t}: {v:.1f}" for t, v in m["accuracy_per_question_type"].items()]
    scoring_io.report(result, args.result_file, lines)
    return result


if __name__ == "__main__":
    main()
