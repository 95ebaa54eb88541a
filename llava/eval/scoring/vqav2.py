"""VQAv2: soft VQA accuracy locally, and the EvalAI submission file for test-dev.

Official metric (Antol et al. 2015 / Goyal et al. 2017, VQA evaluation code): normalise the
prediction and the 10 human answers (see :mod:`vqa_normalize`); for each of the 10
leave-one-out subsets of 9 answers, acc = min(1, #matches / 3); average the 10, then average
over questions; report %. The official report adds the same accuracy per ``answer_type``
("yes/no", "number", "other"). Headline = overall % (LLaVA-1.5-7B: 78.5 on test-dev).

test-dev answers are not public: the number in papers comes from the EvalAI server
(challenge 830). ``--submission-file`` writes what it wants, ``[{"question_id", "answer"}]``
with answers through the EvalAI processor, one entry for every question of
``--question-file`` (LLaVA passes the full ``llava_vqav2_mscoco_test2015.jsonl``; questions
not answered, e.g. those outside test-dev, get ``""`` as in LLaVA's converter). A local
score needs annotations in the official format (``v2_mscoco_val2014_annotations.json``:
``{"annotations": [{"question_id", "answer_type", "answers": [{"answer"}, ...]}]}``), e.g.
for a val subset; ours normalises the human answers too, as the TextVQA evaluator does
(the official VQA code only strips their punctuation), which changes almost nothing because
the released human answers are already normalised.

CLI::

    python -m llava.eval.scoring.vqav2 --answers-file A.jsonl [A2.jsonl ...]
        [--annotation-file v2_mscoco_val2014_annotations.json]
        [--question-file llava_vqav2_mscoco_test2015.jsonl]
        [--submission-file answers_upload/test-dev/MODEL.json]
        [--result-file OUT.json] [--allow-missing]

At least one of ``--annotation-file`` / ``--submission-file`` is required. With
``--question-file`` and ``--annotation-file`` both given, the questions of the question
file are the ones scored.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from tqdm import tqdm

from llava.eval.scoring import scoring_io
from llava.eval.scoring.vqa_normalize import normalize_answer, vqa_soft_accuracy

BENCHMARK = "vqav2"


def load_annotations(path: str) -> dict:
    """Official VQA annotation JSON -> ``{question_id: {"answers": [...], "answer_type": str}}``."""
    data = scoring_io.read_json(path)
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{path}: expected the official VQA annotation JSON with an "
                         "'annotations' list")
    out = {}
    for ann in data["annotations"]:
        scoring_io.require_fields(ann, ("question_id", "answers"), what="annotation")
        out[ann["question_id"]] = {"answers": [a["answer"] for a in ann["answers"]],
                                   "answer_type": ann.get("answer_type", "unknown")}
    return out


def score(answers: list[dict], annotations: dict, *, question_ids: list | None = None,
          allow_missing: bool = False, benchmark: str = BENCHMARK) -> dict:
    """Soft accuracy of ``answers`` against ``annotations`` (``load_annotations`` format)."""
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    annotations = {str(q): v for q, v in annotations.items()}
    expected = ([str(q) for q in question_ids] if question_ids is not None
                else list(annotations))
    missing_ann = [q for q in expected if q not in annotations]
    if missing_ann:
        raise ValueError(f"{len(missing_ann)} questions have no annotation, e.g. {missing_ann[:5]}")
    scored = scoring_io.check_coverage(expected, by_id, allow_missing=allow_missing,
                                       what=benchmark)
    total = 0.0
    by_type: dict[str, list[float]] = defaultdict(list)
    for qid in tqdm(scored, desc="vqav2", disable=None):
        acc = vqa_soft_accuracy(by_id[qid]["text"], annotations[qid]["answers"])
        total += acc
        by_type[annotations[qid]["answer_type"]].append(acc)
    overall = scoring_io.percent(total, len(scored))
    metrics = {
        "accuracy": overall,
        "accuracy_per_answer_type": {t: scoring_io.percent(sum(v), len(v))
                                     for t, v in sorted(by_type.items())},
        "n_missing": len(expected) - len(scored),
        "convention": "headline = VQA soft accuracy (%) over the scored questions",
    }
    return scoring_io.make_result(benchmark, overall, metrics, len(scored))


def submission(answers: list[dict], question_ids: list | None = None) -> tuple[list[dict], int]:
    """EvalAI rows ``[{question_id, answer}]`` and how many questions got an empty answer."""
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
                   allow_missing=args.allow_missing)
    m = result["metrics"]
    scoring_io.report(result, args.result_file, [
        f"{t}: {v:.2f}" for t, v in m["accuracy_per_answer_type"].items()])
    return result


if __name__ == "__main__":
    main()
