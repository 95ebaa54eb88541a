"""GQA (testdev-balanced): exact-match accuracy.

Default (``--parser official``) = exactly LLaVA's ``scripts/convert_gqa_for_eval.py`` followed
by GQA's ``eval.py --tier testdev_balanced``: the prediction is ``text.rstrip('.').lower()``
-- trailing periods off and lower case, **nothing else: surrounding whitespace stays**, so
``"yes "`` is wrong -- and a question is right when that string equals its ``answer``;
accuracy = 100 * mean over the balanced questions of the tier
(``testdev_balanced_questions.json``, 12,578 questions). Headline = accuracy % (LLaVA-1.5-7B:
62.0 in the model zoo, 61.9 in pruning papers). As ``eval.py`` prints them we also report
accuracy on binary / open questions (open = structural type ``query``), per structural type
(verify / query / choose / logical / compare), per semantic type, per number of words of the
question and per number of reasoning steps (when the questions carry ``question`` /
``semantic``). Its validity, plausibility, consistency, grounding and distribution scores need
the scene-graph and choices files and are not reproduced here.

``--parser lenient`` adds, beside the official figures, our former normalisation: whitespace
stripped around the text and again after the trailing periods go, then lower case.

``--submission-file`` writes ``testdev_balanced_predictions.json``
(``[{"questionId", "prediction"}]``, the official preparation) for the official ``eval.py``.

CLI::

    python -m llava.eval.scoring.gqa --answers-file A.jsonl [...]
        --annotation-file data/testdev_balanced_questions.json
        [--submission-file data/testdev_balanced_predictions.json]
        [--result-file OUT.json] [--allow-missing] [--parser official|lenient]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from llava.eval.scoring import scoring_io

BENCHMARK = "gqa"
LENIENT_HELP = "predictions with surrounding whitespace stripped too"
# eval.py's getStepsNum: operations that do not count as a reasoning step
_NOT_A_STEP = ("exist", "query: name", "choose name")


def official_prediction(text: str) -> str:
    """LLaVA's ``convert_gqa_for_eval.py``: trailing periods off, lower case; nothing else."""
    return text.rstrip(".").lower()


def lenient_prediction(text: str) -> str:
    """Our former preparation: also strips whitespace (``" Yes. "`` -> ``"yes"``)."""
    return text.strip().rstrip(".").strip().lower()


normalize_prediction = official_prediction


def _steps(question: dict) -> int:
    return len([c for c in question["semantic"]
                if not any(o in f"{c['operation']}: {c['argument']}" for o in _NOT_A_STEP)])


def _score(by_id: dict, questions: dict, scored: list, n_expected: int, prepare) -> dict:
    groups: dict[str, dict] = {k: defaultdict(list) for k in
                               ("structural", "semantic", "words", "steps")}
    accuracy: list[float] = []
    binary_open: dict[str, list[float]] = {"binary": [], "open": []}
    for qid in scored:
        q = questions[qid]
        ok = float(1 if prepare(by_id[qid]["text"]) == q["answer"] else 0)
        accuracy.append(ok)
        types = q.get("types", {})
        for kind in ("structural", "semantic"):
            if types.get(kind) is not None:
                groups[kind][types[kind]].append(ok)
        if types.get("structural") is not None:
            binary_open["open" if types["structural"] == "query" else "binary"].append(ok)
        if isinstance(q.get("question"), str):
            groups["words"][len(q["question"].split())].append(ok)
        if isinstance(q.get("semantic"), list):
            groups["steps"][_steps(q)].append(ok)

    def avg100(v: list[float]) -> float:  # eval.py: avg(l) * 100
        return float(sum(v)) / len(v) * 100

    acc = avg100(accuracy)
    metrics = {
        "accuracy": acc,
        "binary_accuracy": avg100(binary_open["binary"]) if binary_open["binary"] else None,
        "open_accuracy": avg100(binary_open["open"]) if binary_open["open"] else None,
        "accuracy_per_structural_type": {t: avg100(v) for t, v in
                                         sorted(groups["structural"].items())},
        "accuracy_per_semantic_type": {t: avg100(v) for t, v in
                                       sorted(groups["semantic"].items())},
        "accuracy_per_words_number": {str(t): avg100(v) for t, v in
                                      sorted(groups["words"].items())},
        "accuracy_per_steps_number": {str(t): avg100(v) for t, v in
                                      sorted(groups["steps"].items())},
        "n_missing": n_expected - len(scored),
        "convention": "headline = exact-match accuracy (%) on testdev-balanced",
    }
    return scoring_io.make_result(BENCHMARK, acc, metrics, len(scored))


def score(answers: list[dict], questions: dict, *, allow_missing: bool = False,
          parser: str = "official") -> dict:
    """``questions``: the official ``{question_id: {"answer", "types", "isBalanced", ...}}``."""
    if parser not in scoring_io.PARSERS:
        raise ValueError(f"parser must be one of {scoring_io.PARSERS}, got {parser!r}")
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    expected = [qid for qid, q in questions.items() if q.get("isBalanced", True)]
    scored = scoring_io.check_coverage(expected, by_id, allow_missing=allow_missing,
                                       what=BENCHMARK)
    result = _score(by_id, questions, scored, len(expected), official_prediction)
    if parser == "lenient":
        result = scoring_io.with_lenient(
            result, _score(by_id, questions, scored, len(expected), lenient_prediction))
    return result


def submission(answers: list[dict]) -> list[dict]:
    """Rows of ``testdev_balanced_predictions.json`` in answer order (LLaVA's converter)."""
    return [{"questionId": str(a["question_id"]), "prediction": official_prediction(a["text"])}
            for a in answers]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    scoring_io.add_parser_arg(parser, LENIENT_HELP)
    parser.add_argument("--annotation-file", required=True,
                        help="testdev_balanced_questions.json")
    parser.add_argument("--submission-file", help="write testdev_balanced_predictions.json here")
    args = parser.parse_args(argv)
    answers = scoring_io.read_jsonl(args.answers_file)
    result = score(answers, scoring_io.read_json(args.annotation_file),
                   allow_missing=args.allow_missing, parser=args.parser)
    if args.submission_file:
        scoring_io.write_json(args.submission_file, submission(answers), indent=None)
    m = result["metrics"]
    scoring_io.report(result, args.result_file, [
        "structural: " + ", ".join(f"{t} {v:.1f}" for t, v in
                                   m["accuracy_per_structural_type"].items())])
    return result


if __name__ == "__main__":
    main()
