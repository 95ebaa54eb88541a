"""VizWiz-VQA: the EvalAI submission file, and the VQA soft accuracy where answers are known.

Official metric (Gurari et al. 2018, "VizWiz Grand Challenge"; the VizWiz evaluation code is
the VQA one): normalise the prediction and the 10 crowd answers (:mod:`vqa_normalize`), mean
over the 10 leave-one-out subsets of min(1, #matches / 3), mean over questions, in %.
Unanswerable questions have "unanswerable" as their crowd answer, so the model is right
there by answering "unanswerable" (LLaVA's prompt asks for "Unanswerable", which normalises
to it). The paper number (LLaVA-1.5-7B: 50.0) is the test-dev score from the EvalAI server
(challenge 1911); headline = soft accuracy %. We also report it per ``answer_type`` and for
the questions with ``answerable == 0``.

Files (LLaVA layout, ``vizwiz/``): ``--question-file llava_test.jsonl`` maps
``question_id`` to ``image``; ``--submission-file`` writes ``[{"image", "answer"}]`` for every
question of it, answers through the EvalAI processor (LLaVA's converter). A local score needs
``--annotation-file`` in the official annotation format with answers (``val.json``: a list of
``{"image", "question", "answers": [{"answer", "answer_confidence"}], "answer_type",
"answerable"}``); the released ``test.json`` has no answers.

CLI::

    python -m llava.eval.scoring.vizwiz --answers-file A.jsonl [...]
        --question-file llava_test.jsonl [--annotation-file val.json]
        [--submission-file answers_upload/MODEL.json] [--result-file OUT.json]
        [--allow-missing]

At least one of ``--annotation-file`` / ``--submission-file`` is required.

The submission file equals LLaVA's ``scripts/convert_vizwiz_for_submission.py`` (EvalAI
processor on every answer, one row per question). The local val score is ours, not the
server's: the VizWiz evaluation code the server runs (a ``vqaEval.py`` variant) compares the
prediction, processed once more with the VQA API's punctuation / digit-article rules (and a
contraction table with typographic apostrophes), against the crowd answers *as written*,
while we normalise the crowd answers too (the m4c rule); the two differ where crowd answers
are not already in normal form. LLaVA reports only the server's test-dev figure.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from tqdm import tqdm

from llava.eval.scoring import scoring_io
from llava.eval.scoring.vqa_normalize import normalize_answer, vqa_soft_accuracy

BENCHMARK = "vizwiz"


def _answers_by_image(answers: list[dict], questions: list[dict]) -> tuple[dict, dict]:
    """``({image: answer text}, {question_id: image})``; unknown ids raise ValueError."""
    image_of = {str(q["question_id"]): q["image"] for q in questions}
    scoring_io.index_by(questions, lambda q: q["image"], what="question")  # one per image
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    unknown = [q for q in by_id if q not in image_of]
    if unknown:
        raise ValueError(f"{len(unknown)} answers are for ids not in the question file, "
                         f"e.g. {unknown[:5]}")
    return {image_of[q]: a["text"] for q, a in by_id.items()}, image_of


def score(answers: list[dict], questions: list[dict], annotations: list[dict], *,
          allow_missing: bool = False) -> dict:
    """Soft accuracy over the questions of ``questions`` (matched to ``annotations`` by image)."""
    text_by_image, image_of = _answers_by_image(answers, questions)
    ann_by_image = scoring_io.index_by(annotations, lambda a: a["image"], what="annotation")
    lacking = [im for im in image_of.values() if "answers" not in ann_by_image.get(im, {})]
    if lacking:
        raise ValueError(f"{len(lacking)} questions have no annotated answers (is this "
                         f"test.json? only the server scores test), e.g. {lacking[:5]}")
    scored = scoring_io.check_coverage(list(image_of.values()), text_by_image,
                                       allow_missing=allow_missing, what=BENCHMARK)
    per_type: dict[str, list[float]] = defaultdict(list)
    unanswerable: list[float] = []
    total = 0.0
    for im in tqdm(scored, desc="vizwiz", disable=None):
        ann = ann_by_image[im]
        acc = vqa_soft_accuracy(text_by_image[im], [x["answer"] for x in ann["answers"]])
        total += acc
        per_type[ann.get("answer_type", "unknown")].append(acc)
        if ann.get("answerable", 1) == 0:
            unanswerable.append(acc)
    overall = scoring_io.percent(total, len(scored))
    metrics = {
        "accuracy": overall,
        "accuracy_per_answer_type": {t: scoring_io.percent(sum(v), len(v))
                                     for t, v in sorted(per_type.items())},
        "accuracy_unanswerable": (scoring_io.percent(sum(unanswerable), len(unanswerable))
                                  if unanswerable else None),
        "n_missing": len(image_of) - len(scored),
        "convention": "headline = VQA soft accuracy (%) on the annotated questions",
    }
    return scoring_io.make_result(BENCHMARK, overall, metrics, len(scored))


def submission(answers: list[dict], questions: list[dict], *,
               allow_missing: bool = False) -> list[dict]:
    """``[{image, answer}]`` for every question; a missing answer raises unless allowed ("")."""
    text_by_image, image_of = _answers_by_image(answers, questions)
    scoring_io.check_coverage(list(image_of.values()), text_by_image,
                              allow_missing=allow_missing, what=BENCHMARK)
    return [{"image": q["image"],
             "answer": normalize_answer(text_by_image[q["image"]]) if q["image"] in text_by_image
             else ""} for q in questions]


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--question-file", required=True, help="llava_test.jsonl (or a val one)")
    parser.add_argument("--annotation-file", help="official annotations with answers (val.json)")
    parser.add_argument("--submission-file", help="write the EvalAI JSON here")
    args = parser.parse_args(argv)
    if not args.annotation_file and not args.submission_file:
        parser.error("give --annotation-file (local score) and/or --submission-file (EvalAI)")
    if args.result_file and not args.annotation_file:
        parser.error("--result-file needs --annotation-file: test is scored by EvalAI only")
    answers = scoring_io.read_jsonl(args.answers_file)
    questions = scoring_io.read_jsonl(args.question_file)
    if args.submission_file:
        rows = submission(answers, questions, allow_missing=args.allow_missing)
        scoring_io.write_json(args.submission_file, rows, indent=None)
        print(f"{BENCHMARK}: wrote {len(rows)} submission rows to {args.submission_file}")
    if not args.annotation_file:
        return None
    result = score(answers, questions, scoring_io.read_json(args.annotation_file),
                   allow_missing=args.allow_missing)
    scoring_io.report(result, args.result_file, [
        f"{t}: {v:.2f}" for t, v in result["metrics"]["accuracy_per_answer_type"].items()])
    return result


if __name__ == "__main__":
    main()
