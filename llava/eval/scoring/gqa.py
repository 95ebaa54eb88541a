"""GQA (testdev-balanced): exact-match accuracy.

Official metric (Hudson & Manning 2019, ``eval.py`` of the GQA release): a question is right
when the prediction equals its ``answer`` string; accuracy = right / questions over the
balanced questions of the tier (``testdev_balanced_questions.json``, 12,578 questions).
LLaVA's ``convert_gqa_for_eval.py`` prepares predictions by stripping trailing periods and
lower-casing; we do the same (and also strip surrounding whitespace). Headline = accuracy %
(LLaVA-1.5-7B: 62.0 in the model zoo, 61.9 in pruning papers). We also report accuracy per
structural type (verify / query / choose / logical / compare) and per semantic type, which
the official script prints too. Its validity, plausibility, consistency, grounding and
distribution scores need the scene-graph and choices files and are not reproduced here.

``--submission-file`` writes ``testdev_balanced_predictions.json``
(``[{"questionId", "prediction"}]``) for the official ``eval.py --tier testdev_balanced``.

CLI::

    python -m llava.eval.scoring.gqa --answers-file A.jsonl [...]
        --annotation-file data/testdev_balanced_questions.json
        [--submission-file data/testdev_balanced_predictions.json]
        [--result-file OUT.json] [--allow-missing]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from llava.eval.scoring import scoring_io

BENCHMARK = "gqa"


def normalize_prediction(text: str) -> str:
    """LLaVA's GQA preparation: trailing periods off, lower case (plus whitespace strip)."""
    return text.strip().rstrip(".").strip().lower()


def score(answers: list[dict], questions: dict, *, allow_missing: bool = False) -> dict:
    """``questions``: the official ``{question_id: {"answer", "types", "isBalanced", ...}}``."""
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    expected = [qid for qid, q in questions.items() if q.get("isBalanced", True)]
    scored = scoring_io.check_coverage(expected, by_id, allow_missing=allow_missing,
                                       what=BENCHMARK)
    right = 0
    per_type: dict[str, dict[str, list[int]]] = {"structural": defaultdict(list),
                                                 "semantic": defaultdict(list)}
    for qid in scored:
        q = questions[qid]
        ok = int(normalize_prediction(by_id[qid]["text"]) == q["answer"])
        right += ok
        for kind, groups in per_type.items():
            t = q.get("types", {}).get(kind)
            if t is not None:
                groups[t].append(ok)
    acc = scoring_io.percent(right, len(scored))
    metrics = {
        "accuracy": acc,
        "accuracy_per_structural_type": {t: scoring_io.percent(sum(v), len(v))
                                         for t, v in sorted(per_type["structural"].items())},
        "accuracy_per_semantic_type": {t: scoring_io.percent(sum(v), len(v))
                                       for t, v in sorted(per_type["semantic"].items())},
        "n_missing": len(expected) - len(scored),
        "convention": "headline = exact-match accuracy (%) on testdev-balanced",
    }
    return scoring_io.make_result(BENCHMARK, acc, metrics, len(scored))


def submission(answers: list[dict]) -> list[dict]:
    """Rows of ``testdev_balanced_predictions.json`` in answer order."""
    return [{"questionId": str(a["question_id"]), "prediction": normalize_prediction(a["text"])}
            for a in answers]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--annotation-file", required=True,
                        help="testdev_balanced_questions.json")
    parser.add_argument("--submission-file", help="write testdev_balanced_predictions.json here")
    args = parser.parse_args(argv)
    answers = scoring_io.read_jsonl(args.answers_file)
    result = score(answers, scoring_io.read_json(args.annotation_file),
                   allow_missing=args.allow_missing)
    if args.submission_file:
        scoring_io.write_json(args.submission_file, submission(answers), indent=None)
    m = result["metrics"]
    scoring_io.report(result, args.result_file, [
        "structural: " + ", ".join(f"{t} {v:.1f}" for t, v in
                                   m["accuracy_per_structural_type"].items())])
    return result


if __name__ == "__main__":
    main()
