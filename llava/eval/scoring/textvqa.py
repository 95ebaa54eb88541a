"""TextVQA (val, v0.5.1): VQA soft accuracy.

Default (``--parser official``) = exactly LLaVA's ``llava/eval/eval_textvqa.py`` with mmf's
``TextVQAAccuracyEvaluator`` (LLaVA's ``m4c_evaluator.py``): the prediction and each of the
10 human answers go through the EvalAI answer processor (:mod:`vqa_normalize`); the score of
an answer is the mean over the 10 leave-one-out subsets of min(1, #matches / 3)
(:func:`vqa_normalize.m4c_accuracy`); accuracy = 100 * (mean over the answers, in the answers
file's order). Headline = that % (LLaVA-1.5-7B: 58.2, with OCR tokens in the prompt).

Matching answers to annotations, as LLaVA does: LLaVA's question file
``llava_textvqa_val_v051_ocr.jsonl`` uses the *image id* as ``question_id`` (two questions on
one image share it), so an answer is matched on (image_id, lower-cased question), the
question being read from the prompt by LLaVA's ``prompt_processor`` rule
(:func:`prompt_question`).

Official quirk reproduced (a bug of the official code, kept on purpose): LLaVA keys the
annotations by (image_id, lower-cased question) in a dict, so when that pair occurs twice in
the annotations (a few val questions do), **every answer to the pair is scored against the
LAST annotation's answers**.

``--parser lenient`` adds, beside the official figures, our former pairing: answers to a
repeated pair are assigned in order, one per annotated question, each scored against its own
annotation's answers (closed-form soft accuracy, mean over the annotated questions).

Beyond LLaVA (where its script would crash, so no official figure differs): an answer whose
``question_id`` equals an annotation's numeric ``question_id`` is matched on that; a prompt
question with surrounding spaces falls back to the stripped match; a prompt of another shape
is read by its first line.

CLI::

    python -m llava.eval.scoring.textvqa --answers-file A.jsonl [...]
        --annotation-file TextVQA_0.5.1_val.json [--result-file OUT.json] [--allow-missing]
        [--parser official|lenient]
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from tqdm import tqdm

from llava.eval.scoring import scoring_io
from llava.eval.scoring.vqa_normalize import m4c_accuracy, vqa_soft_accuracy

BENCHMARK = "textvqa"
LENIENT_HELP = ("answers to an (image, question) pair that occurs twice paired in order with "
                "the annotations instead of all against the last one")
_OCR_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def prompt_question(prompt: str) -> str:
    """The question inside a LLaVA TextVQA prompt, lower-cased (LLaVA's ``prompt_processor``).

    ``OCR tokens: ... Question: Q Short answer:`` -> Q; three lines with a ``Reference OCR
    token: `` line -> line 2 if the prompt starts with that line, else line 1; two lines ->
    line 1. Not stripped, as in LLaVA. Any other shape (LLaVA asserts) -> line 1.
    """
    if prompt.startswith("OCR tokens: "):
        m = _OCR_PROMPT.search(prompt)
        if m is None:
            raise ValueError(f"prompt starts with 'OCR tokens:' but has no 'Question: ... "
                             f"Short answer:' part: {prompt[:120]!r}")
        return m.group(1).lower()
    lines = prompt.split("\n")
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    return lines[0].lower()


def load_annotations(path: str) -> list[dict]:
    data = scoring_io.read_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: expected the TextVQA JSON with a 'data' list")
    return data["data"]


def _pair_key(ann: dict) -> tuple[str, str]:
    return str(ann["image_id"]), ann["question"].lower()


def _match_all(answers: list[dict], by_qid: dict, groups: dict) -> list[tuple[str, tuple]]:
    """For each answer, in order: (annotation question_id it covers, its (image, question) key).

    Answers to a pair that occurs twice are assigned in order, one per annotated question,
    so coverage and duplicates are checked per question (the key tells whom LLaVA scores it
    against: the pair's last annotation).
    """
    stripped = {(im, q.strip()): (im, q) for im, q in groups}
    taken: set[str] = set()
    out = []
    for a in answers:
        qid = a["question_id"]
        if str(qid) in by_qid:
            target, key = str(qid), None
        else:
            key = (str(qid), prompt_question(a["prompt"]))
            if key not in groups:
                key = stripped.get((key[0], key[1].strip()))
            if key is None:
                raise ValueError(f"answer {qid!r} matches no TextVQA question: no (image_id, "
                                 f"question) = {(str(qid), prompt_question(a['prompt']))!r} "
                                 "in the annotations")
            free = [q for q in groups[key] if q not in taken]
            if not free:
                raise ValueError(f"more answers than annotated questions for {key!r}: the "
                                 "answers files overlap (was a chunk merged twice?)")
            target = free[0]
        if target in taken:
            raise ValueError(f"two answers for the same question {target!r}: the answers files "
                             "overlap (was a chunk merged twice?)")
        taken.add(target)
        out.append((target, key))
    return out


def score(answers: list[dict], annotations: list[dict], *, allow_missing: bool = False,
          parser: str = "official") -> dict:
    """Soft accuracy; ``annotations`` is the ``data`` list of TextVQA_0.5.1_val.json."""
    if parser not in scoring_io.PARSERS:
        raise ValueError(f"parser must be one of {scoring_io.PARSERS}, got {parser!r}")
    by_qid = {str(ann["question_id"]): ann for ann in annotations}
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    last: dict[tuple[str, str], dict] = {}  # LLaVA's dict: the last annotation of a pair wins
    for ann in annotations:
        groups[_pair_key(ann)].append(str(ann["question_id"]))
        last[_pair_key(ann)] = ann
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "prompt", "text"))
    matched = _match_all(answers, by_qid, groups)
    scored = scoring_io.check_coverage(list(by_qid), [t for t, _ in matched],
                                       allow_missing=allow_missing, what=BENCHMARK)
    n_missing = len(by_qid) - len(scored)

    pred_scores = []  # LLaVA's order: the answers file's
    n_other = 0
    for a, (target, key) in zip(tqdm(answers, desc="textvqa", disable=None), matched):
        gt = by_qid[target] if key is None else last[key]
        n_other += gt is not by_qid[target]
        pred_scores.append(m4c_accuracy(a["text"], gt["answers"]))
    acc = 100.0 * (sum(pred_scores) / len(pred_scores))
    metrics = {"accuracy": acc, "n_missing": n_missing,
               "n_scored_against_last_of_repeated_pair": n_other,
               "convention": "headline = VQA soft accuracy (%) on TextVQA val (LLaVA's "
                             "eval_textvqa.py)"}
    result = scoring_io.make_result(BENCHMARK, acc, metrics, len(pred_scores))
    if parser == "lenient":
        text_of = {t: a["text"] for a, (t, _) in zip(answers, matched)}
        total = sum(vqa_soft_accuracy(text_of[q], by_qid[q]["answers"]) for q in scored)
        lenient_acc = scoring_io.percent(total, len(scored))
        result = scoring_io.with_lenient(result, scoring_io.make_result(
            BENCHMARK, lenient_acc,
            {"accuracy": lenient_acc, "n_missing": n_missing,
             "convention": "repeated (image, question) pairs paired in order"}, len(scored)))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    scoring_io.add_parser_arg(parser, LENIENT_HELP)
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    args = parser.parse_args(argv)
    result = score(scoring_io.read_jsonl(args.answers_file),
                   load_annotations(args.annotation_file), allow_missing=args.allow_missing,
                   parser=args.parser)
    scoring_io.report(result, args.result_file)
    return result


if __name__ == "__main__":
    main()
