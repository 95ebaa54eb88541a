"""TextVQA (val, v0.5.1): VQA soft accuracy.

Official metric (Singh et al. 2019; ``TextVQAAccuracyEvaluator`` of facebookresearch/mmf,
which LLaVA's ``eval_textvqa.py`` calls): the prediction and each of the 10 human answers go
through the EvalAI answer processor (:mod:`vqa_normalize`); the score of a question is the
mean over the 10 leave-one-out subsets of min(1, #matches / 3); report the mean over all
5000 val questions in %. Headline = that % (LLaVA-1.5-7B: 58.2, with OCR tokens in the
prompt).

Matching answers to annotations: LLaVA's question file ``llava_textvqa_val_v051_ocr.jsonl``
uses the *image id* as ``question_id`` (two questions on one image share it), so, as LLaVA
does, an answer is matched on (image_id, lower-cased question), the question being the
prompt's first line (or the text between "Question:" and "Short answer:" for prompts that
start with "OCR tokens:"). An answer whose ``question_id`` equals an annotation's numeric
``question_id`` is matched on that instead.

CLI::

    python -m llava.eval.scoring.textvqa --answers-file A.jsonl [...]
        --annotation-file TextVQA_0.5.1_val.json [--result-file OUT.json] [--allow-missing]
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from tqdm import tqdm

from llava.eval.scoring import scoring_io
from llava.eval.scoring.vqa_normalize import vqa_soft_accuracy

BENCHMARK = "textvqa"
_OCR_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def prompt_question(prompt: str) -> str:
    """The question inside a LLaVA TextVQA prompt, lower-cased."""
    if prompt.startswith("OCR tokens: "):
        m = _OCR_PROMPT.search(prompt)
        if m is None:
            raise ValueError(f"prompt starts with 'OCR tokens:' but has no 'Question: ... "
                             f"Short answer:' part: {prompt[:120]!r}")
        return m.group(1).strip().lower()
    return scoring_io.question_text(prompt).lower()


def load_annotations(path: str) -> list[dict]:
    data = scoring_io.read_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: expected the TextVQA JSON with a 'data' list")
    return data["data"]


def _match_all(answers: list[dict], by_qid: dict, by_image_question: dict) -> dict:
    """``{annotation question_id: answer}``.

    A few (image, question) pairs can occur twice in the annotations; their answers are
    assigned in order, so each annotated question gets one answer (LLaVA's dict would score
    both answers against the last of the pair).
    """
    matched: dict[str, dict] = {}
    for a in answers:
        qid = a["question_id"]
        if str(qid) in by_qid:
            target = str(qid)
        else:
            key = (str(qid), prompt_question(a["prompt"]))
            if key not in by_image_question:
                raise ValueError(f"answer {qid!r} matches no TextVQA question: no (image_id, "
                                 f"question) = {key!r} in the annotations")
            free = [q for q in by_image_question[key] if q not in matched]
            if not free:
                raise ValueError(f"more answers than annotated questions for {key!r}: the "
                                 "answers files overlap (was a chunk merged twice?)")
            target = free[0]
        if target in matched:
            raise ValueError(f"two answers for the same question {target!r}: the answers files "
                             "overlap (was a chunk merged twice?)")
        matched[target] = a
    return matched


def score(answers: list[dict], annotations: list[dict], *, allow_missing: bool = False) -> dict:
    """Soft accuracy; ``annotations`` is the ``data`` list of TextVQA_0.5.1_val.json."""
    by_qid = {str(ann["question_id"]): ann for ann in annotations}
    by_image_question: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ann in annotations:
        by_image_question[(str(ann["image_id"]), ann["question"].strip().lower())].append(
            str(ann["question_id"]))
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "prompt", "text"))
    matched = _match_all(answers, by_qid, by_image_question)
    scored = scoring_io.check_coverage(list(by_qid), matched, allow_missing=allow_missing,
                                       what=BENCHMARK)
    total = sum(vqa_soft_accuracy(matched[q]["text"], by_qid[q]["answers"])
                for q in tqdm(scored, desc="textvqa", disable=None))
    acc = scoring_io.percent(total, len(scored))
    metrics = {"accuracy": acc, "n_missing": len(by_qid) - len(scored),
               "convention": "headline = VQA soft accuracy (%) on TextVQA val"}
    return scoring_io.make_result(BENCHMARK, acc, metrics, len(scored))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    args = parser.parse_args(argv)
    result = score(scoring_io.read_jsonl(args.answers_file),
                   load_annotations(args.annotation_file), allow_missing=args.allow_missing)
    scoring_io.report(result, args.result_file)
    return result


if __name__ == "__main__":
    main()
