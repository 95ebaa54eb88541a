"""VQAv2: VQA accuracy locally (val-format annotations), and the EvalAI submission file.

Default (``--parser official``) = exactly the official pipeline LLaVA's numbers come from:
LLaVA's ``scripts/convert_vqav2_for_submission.py`` writes each answer through the EvalAI
answer processor (:func:`vqa_normalize.normalize_answer`), then the VQA API's ``vqaEval.py``
(GT-Vision-Lab/VQA) scores that file (:func:`vqa_normalize.vqa_api_accuracy`): newlines /
tabs / outer spaces stripped; **only when a question's 10 human answers are not all the
same** are the humans and the prediction normalised again, with the API's lighter rules
(no lower-casing before the punctuation step, no ``'s`` split, its own digit-comma rule);
when all 10 agree the written prediction must equal their answer as is. Leave-one-out
over the 10 answer records, acc = min(1, #matches / 3), mean over the 10, mean over
questions, in the annotation file's order (so the float sums are the official ones), %;
also per ``answer_type`` and per ``question_type`` as the API reports them. The API rounds
to 2 decimals when it stores them; we keep the full value (rounded, it is the API's).

Official quirks reproduced (bugs of the official code, kept on purpose so the figures
match): both processors pass ``re.UNICODE`` (= 32) as ``re.sub``'s count, so one pass deletes
at most 32 periods -- the converter's pass, then the API's second pass when the humans
disagree; ``it's`` is written ``it 's`` by the converter, which the API's second pass leaves
so (the API itself does not split ``'s`` in the human answers); the API's leave-one-out
leaves out every answer record equal to the left-out one (with the official ``answer_id``
fields, exactly one).

``--parser lenient`` adds, beside the official figures, the m4c rule we used before: the
prediction and all 10 human answers through the EvalAI processor once, whether or not the
humans agree (as the TextVQA evaluator does), closed-form soft accuracy.

Headline = overall % (LLaVA-1.5-7B: 78.5 on test-dev, from the EvalAI server).

test-dev answers are not public: the number in papers comes from the EvalAI server
(challenge 830). ``--submission-file`` writes what it wants, exactly as LLaVA's converter:
``[{"question_id", "answer"}]`` with answers through the EvalAI processor, one entry for
every question of ``--question-file`` (LLaVA passes the full
``llava_vqav2_mscoco_test2015.jsonl``; questions not answered, e.g. those outside test-dev,
get ``""``). A local score needs annotations in the official format
(``v2_mscoco_val2014_annotations.json``: ``{"annotations": [{"question_id", "answer_type",
"question_type", "answers": [{"answer", "answer_confidence", "answer_id"}, ...]}]}``), e.g.
for a val subset.

An answer whose ``question_id`` has another type than the question file's (or, without one,
the annotations') is an error: the official converter would look it up in vain and submit
``""`` (see :func:`scoring_io.check_id_types`).

CLI::

    python -m llava.eval.scoring.vqav2 --answers-file A.jsonl [A2.jsonl ...]
        [--annotation-file v2_mscoco_val2014_annotations.json]
        [--question-file llava_vqav2_mscoco_test2015.jsonl]
        [--submission-file answers_upload/test-dev/MODEL.json]
        [--result-file OUT.json] [--allow-missing] [--parser official|lenient]

At least one of ``--annotation-file`` / ``--submission-file`` is required. With
``--question-file`` and ``--annotation-file`` both given, the questions of the question
file are the ones scored.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from tqdm import tqdm

from llava.eval.scoring import scoring_io
from llava.eval.scoring.vqa_normalize import (normalize_answer, vqa_api_accuracy,
                                              vqa_soft_accuracy)

BENCHMARK = "vqav2"
LENIENT_HELP = ("the m4c rule (prediction and all human answers through the EvalAI processor "
                "once, even when the humans agree)")


def load_annotations(path: str) -> dict:
    """Official VQA annotation JSON -> ``{question_id: {"answers", "answer_records",
    "answer_type", "question_type"}}`` (``answers``: the answer strings; ``answer_records``:
    the official answer dicts, which the API's leave-one-out compares whole)."""
    data = scoring_io.read_json(path)
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{path}: expected the official VQA annotation JSON with an "
                         "'annotations' list")
    out = {}
    for ann in data["annotations"]:
        scoring_io.require_fields(ann, ("question_id", "answers"), what="annotation")
        out[ann["question_id"]] = {"answers": [a["answer"] for a in ann["answers"]],
                                   "answer_records": [dict(a) for a in ann["answers"]],
                                   "answer_type": ann.get("answer_type", "unknown"),
                                   "question_type": ann.get("question_type")}
    return out


def _official_accuracy(text: str, ann: dict) -> float:
    # LLaVA's converter writes normalize_answer(text); vqaEval scores what was written.
    return vqa_api_accuracy(normalize_answer(text), ann.get("answer_records") or ann["answers"])


def _lenient_accuracy(text: str, ann: dict) -> float:
    return vqa_soft_accuracy(text, ann["answers"])


def _score(by_id: dict, annotations: dict, scored: list, n_expected: int, benchmark: str,
           accuracy) -> dict:
    accs: list[float] = []
    by_type: dict[str, list[float]] = defaultdict(list)
    by_qtype: dict[str, list[float]] = defaultdict(list)
    for qid in tqdm(scored, desc=benchmark, disable=None):
        ann = annotations[qid]
        acc = accuracy(by_id[qid]["text"], ann)
        accs.append(acc)
        by_type[ann["answer_type"]].append(acc)
        if ann.get("question_type") is not None:
            by_qtype[ann["question_type"]].append(acc)
    overall = scoring_io.percent(sum(accs), len(accs))
    metrics = {
        "accuracy": overall,
        "accuracy_per_answer_type": {t: scoring_io.percent(sum(v), len(v))
                                     for t, v in sorted(by_type.items())},
        "accuracy_per_question_type": {t: scoring_io.percent(sum(v), len(v))
                                       for t, v in sorted(by_qtype.items())},
        "n_missing": n_expected - len(scored),
        "convention": "headline = VQA accuracy (%) over the scored questions",
    }
    return scoring_io.make_result(benchmark, overall, metrics, len(scored))


def score(answers: list[dict], annotations: dict, *, question_ids: list | None = None,
          allow_missing: bool = False, benchmark: str = BENCHMARK,
          parser: str = "official") -> dict:
    """VQA accuracy of ``answers`` against ``annotations`` (``load_annotations`` format).

    ``parser="official"``: the converter + VQA API figures; ``"lenient"``: the same result
    with the m4c-rule figures added under ``lenient`` (module doc).
    """
    if parser not in scoring_io.PARSERS:
        raise ValueError(f"parser must be one of {scoring_io.PARSERS}, got {parser!r}")
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    scoring_io.check_id_types(answers, question_ids if question_ids is not None else annotations,
                              what=benchmark)
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    annotations = {str(q): v for q, v in annotations.items()}
    expected = ([str(q) for q in question_ids] if question_ids is not None
                else list(annotations))
    missing_ann = [q for q in expected if q not in annotations]
    if missing_ann:
        raise ValueError(f"{len(missing_ann)} questions have no annotation, e.g. {missing_ann[:5]}")
    scored_set = set(scoring_io.check_coverage(expected, by_id, allow_missing=allow_missing,
                                               what=benchmark))
    scored = [q for q in annotations if q in scored_set]  # vqaEval's order: the annotations'
    result = _score(by_id, annotations, scored, len(expected), benchmark, _official_accuracy)
    if parser == "lenient":
        result = scoring_io.with_lenient(
            result, _score(by_id, annotations, scored, len(expected), benchmark,
                           _lenient_accuracy))
    return result


def submission(answers: list[dict], question_ids: list | None = None) -> tuple[list[dict], int]:
    """EvalAI rows ``[{question_id, answer}]`` and how many questions got an empty answer."""
    if question_ids is not None:
        scoring_io.check_id_types(answers, question_ids, what=BENCHMARK)
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    ids = question_ids if question_ids is not None else [a["question_id"] for a in answers]
    unknown = set(by_id) - {str(q) for q in ids}
    if unknown:
        raise ValueError(f"{len(unknown)} answers are for questions outside --question-file, "
                         f"e.g. {sorted(unknown)[:5]}")
    rows = [{"question_id": q,
             "answer": normalize_answer(by_id[str(q)]["text"]) if str(q) in by_id else ""}
            for q in ids]
    return rows, sum(str(q) not in by_id for q in ids)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    scoring_io.add_parser_arg(parser, LENIENT_HELP)
    parser.add_argument("--annotation-file", help="official VQA annotation JSON (local score)")
    parser.add_argument("--question-file", help="LLaVA question JSONL: the questions to "
                        "score / to list in the submission")
    parser.add_argument("--submission-file", help="write the EvalAI JSON here")
    args = parser.parse_args(argv)
    if not args.annotation_file and not args.submission_file:
        parser.error("give --annotation-file (local score) and/or --submission-file (EvalAI)")
    if args.result_file and not args.annotation_file:
        parser.error("--result-file needs --annotation-file: test-dev is scored by EvalAI only")
    answers = scoring_io.read_jsonl(args.answers_file)
    qids = ([q["question_id"] for q in scoring_io.read_jsonl(args.question_file)]
            if args.question_file else None)
    if args.submission_file:
        rows, n_empty = submission(answers, qids)
        scoring_io.write_json(args.submission_file, rows, indent=None)
        print(f"{BENCHMARK}: wrote {len(rows)} submission rows ({n_empty} without an answer, "
              f"left empty) to {args.submission_file}")
    if not args.annotation_file:
        return None
    result = score(answers, load_annotations(args.annotation_file), question_ids=qids,
                   allow_missing=args.allow_missing, parser=args.parser)
    m = result["metrics"]
    scoring_io.report(result, args.result_file, [
        f"{t}: {v:.2f}" for t, v in m["accuracy_per_answer_type"].items()])
    return result


if __name__ == "__main__":
    main()
