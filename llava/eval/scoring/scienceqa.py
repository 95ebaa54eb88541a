"""ScienceQA (test split): option accuracy, and accuracy on the questions with an image.

Default (``--parser official``) = exactly LLaVA's ``llava/eval/eval_science_qa.py`` (options
``A``-``E``): the answer text is read in exactly three forms (:func:`official_letter`), and
anything else is ``FAILED`` (wrong):

1. the whole text is one of ``A B C D E``;
2. the text is at least 3 characters, starts with one of them, then ``". "`` (``"B. dog"``);
3. the regex ``The answer is ([A-Z]).`` matches exactly once -- its ``.`` is a regex dot, so
   any character may follow the letter: ``"The answer is Clock."`` reads ``C``, while
   ``"The answer is A"`` at the very end reads nothing.

The letter counts only if it is among the first ``len(choices)`` options; a problem is right
when its index equals ``answer`` in ``problems.json``. accuracy = right / problems * 100 over
``pid_splits.json[split]`` (test: 4,241); IMG-accuracy = the same over the answers whose
``prompt`` contains ``<image>`` (LLaVA's test for "multimodal"; ``model_vqa_science`` puts it
there exactly for the problems with an image, 2,017). LLaVA-1.5 reports SQA-IMG, so headline
= IMG-accuracy % (66.8 in the model zoo, 69.5 in pruning papers). We also report accuracy per
subject (natural / social / language science); ``n_failed`` counts the FAILED answers.

``--parser lenient`` adds, beside the official figures, our former reading: the letter by
:func:`choices.parse_option_letter` (also ``"(B)"``, ``"B)"``, ``"B."``, ``"Answer: B"``, ``"the
answer is B"``...; but ``"The answer is Clock."`` is unreadable there) and "has an image" from
``problems.json``.

An answer whose ``question_id`` is not a string is an error: LLaVA looks answers up by the
problem-id strings and would count such answers FAILED (:func:`scoring_io.check_id_types`).

Files (LLaVA layout, ``--base-dir scienceqa``): ``problems.json``, ``pid_splits.json``; the
answers come from a run on ``llava_test_CQM-A.json`` (``question_id`` = problem id).

CLI::

    python -m llava.eval.scoring.scienceqa --answers-file A.jsonl [...]
        --base-dir scienceqa [--split test] [--result-file OUT.json] [--allow-missing]
        [--parser official|lenient]
"""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict

from llava.eval.scoring import scoring_io
from llava.eval.scoring.choices import LETTERS, parse_option_letter

BENCHMARK = "scienceqa"
OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options default
LENIENT_HELP = ("letters read by our broader parser (also '(B)', 'B.', 'Answer: B', ...) and "
                "the image flag from problems.json")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def official_letter(text: str) -> str | None:
    """The letter LLaVA's ``eval_science_qa.py`` reads, or None for its ``FAILED``."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def _pred_idx(letter: str | None, n_choices: int) -> int:
    """LLaVA's ``get_pred_idx``: the option index, or -1 outside ``OPTIONS[:n_choices]``."""
    return OPTIONS.index(letter) if letter in OPTIONS[:n_choices] else -1


def _score(by_id: dict, problems: dict, scored: list, n_split: int, official: bool) -> dict:
    right = img_right = img_total = failed = 0
    by_subject: dict[str, list[int]] = defaultdict(list)
    for pid in scored:
        prob = problems[pid]
        answer = by_id[pid]
        if official:
            letter = official_letter(answer["text"])
            ok = int(_pred_idx(letter, len(prob["choices"])) == prob["answer"])
            has_image = "<image>" in str(answer.get("prompt", ""))
        else:
            choices = prob["choices"]
            letter = parse_option_letter(answer["text"], len(choices), choices)
            ok = int(letter is not None and LETTERS.index(letter) == prob["answer"])
            has_image = bool(prob.get("image"))
        failed += letter is None
        right += ok
        if has_image:
            img_total += 1
            img_right += ok
        by_subject[prob.get("subject", "unknown")].append(ok)
    if not img_total:
        raise ValueError("no scored problem has an image"
                         + (" (no answer prompt contains '<image>')" if official else "")
                         + ": IMG-accuracy (the headline) is undefined")
    img_acc = img_right / img_total * 100  # eval_science_qa.py's order of operations
    metrics = {
        "img_accuracy": img_acc,
        "accuracy": right / len(scored) * 100,
        "accuracy_per_subject": {s: sum(v) / len(v) * 100 for s, v in sorted(by_subject.items())},
        "n_img": img_total,
        "n_failed": failed,
        "n_missing": n_split - len(scored),
        "convention": "headline = IMG-accuracy (%): test problems with an image (SQA-IMG)",
    }
    return scoring_io.make_result(BENCHMARK, img_acc, metrics, len(scored))


def score(answers: list[dict], problems: dict, split_ids: list[str], *,
          allow_missing: bool = False, parser: str = "official") -> dict:
    """``problems``: problems.json; ``split_ids``: the problem ids of the split."""
    if parser not in scoring_io.PARSERS:
        raise ValueError(f"parser must be one of {scoring_io.PARSERS}, got {parser!r}")
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    scoring_io.check_id_types(answers, split_ids, what=BENCHMARK)
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    split_ids = [str(p) for p in split_ids]
    unknown_split = [p for p in split_ids if p not in problems]
    if unknown_split:
        raise ValueError(f"{len(unknown_split)} split ids are not in problems.json, "
                         f"e.g. {unknown_split[:5]}")
    scored = scoring_io.check_coverage(split_ids, by_id, allow_missing=allow_missing,
                                       what=BENCHMARK)
    result = _score(by_id, problems, scored, len(split_ids), official=True)
    if parser == "lenient":
        result = scoring_io.with_lenient(
            result, _score(by_id, problems, scored, len(split_ids), official=False))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    scoring_io.add_parser_arg(parser, LENIENT_HELP)
    parser.add_argument("--base-dir", required=True,
                        help="folder with problems.json and pid_splits.json")
    parser.add_argument("--split", default="test", help="key of pid_splits.json (default test)")
    args = parser.parse_args(argv)
    splits = scoring_io.read_json(os.path.join(args.base_dir, "pid_splits.json"))
    if args.split not in splits:
        raise ValueError(f"--split {args.split!r} not in pid_splits.json; choose from "
                         f"{sorted(splits)}")
    problems = scoring_io.read_json(os.path.join(args.base_dir, "problems.json"))
    result = score(scoring_io.read_jsonl(args.answers_file), problems, list(splits[args.split]),
                   allow_missing=args.allow_missing, parser=args.parser)
    m = result["metrics"]
    scoring_io.report(result, args.result_file, [
        f"accuracy (all) {m['accuracy']:.2f}, IMG {m['img_accuracy']:.2f} on {m['n_img']}; "
        f"failed {m['n_failed']}"])
    return result


if __name__ == "__main__":
    main()
