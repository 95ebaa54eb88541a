"""ScienceQA (test split): option accuracy, and accuracy on the questions with an image.

Official metric (Lu et al. 2022, "Learn to Explain"; LLaVA's ``eval_science_qa.py``): a
problem is right when the predicted option index equals ``answer`` in ``problems.json``;
accuracy over the problems of ``pid_splits.json[split]`` (test: 4,241). LLaVA-1.5 reports
SQA-IMG, the accuracy over the test problems that have an image (2,017), so headline =
IMG-accuracy % (66.8 in the model zoo, 69.5 in pruning papers). We also report accuracy
over all problems and per subject (natural / social / language science).

The letter is read with :func:`choices.parse_option_letter` (bare letter, "B. ...",
"The answer is B", as LLaVA accepts); an answer naming no valid option counts wrong and is
counted in ``n_unparsed``. A problem "has an image" when ``problems.json`` gives it one
(LLaVA looks for ``<image>`` in the prompt, which its question file sets exactly then).

Files (LLaVA layout, ``--base-dir scienceqa``): ``problems.json``, ``pid_splits.json``; the
answers come from a run on ``llava_test_CQM-A.json`` (``question_id`` = problem id).

CLI::

    python -m llava.eval.scoring.scienceqa --answers-file A.jsonl [...]
        --base-dir scienceqa [--split test] [--result-file OUT.json] [--allow-missing]
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

from llava.eval.scoring import scoring_io
from llava.eval.scoring.choices import LETTERS, parse_option_letter

BENCHMARK = "scienceqa"


def score(answers: list[dict], problems: dict, split_ids: list[str], *,
          allow_missing: bool = False) -> dict:
    """``problems``: problems.json; ``split_ids``: the problem ids of the split."""
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    unknown_split = [p for p in split_ids if p not in problems]
    if unknown_split:
        raise ValueError(f"{len(unknown_split)} split ids are not in problems.json, "
                         f"e.g. {unknown_split[:5]}")
    scored = scoring_io.check_coverage(split_ids, by_id, allow_missing=allow_missing,
                                       what=BENCHMARK)
    right = img_right = img_total = unparsed = 0
    by_subject: dict[str, list[int]] = defaultdict(list)
    for pid in scored:
        prob = problems[pid]
        choices = prob["choices"]
        letter = parse_option_letter(by_id[pid]["text"], len(choices), choices)
        unparsed += letter is None
        ok = int(letter is not None and LETTERS.index(letter) == prob["answer"])
        right += ok
        if prob.get("image"):
            img_total += 1
            img_right += ok
        by_subject[prob.get("subject", "unknown")].append(ok)
    img_acc = scoring_io.percent(img_right, img_total) if img_total else None
    if img_acc is None:
        raise ValueError("no scored problem has an image: IMG-accuracy (the headline) is undefined")
    metrics = {
        "img_accuracy": img_acc,
        "accuracy": scoring_io.percent(right, len(scored)),
        "accuracy_per_subject": {s: scoring_io.percent(sum(v), len(v))
                                 for s, v in sorted(by_subject.items())},
        "n_img": img_total,
        "n_unparsed": unparsed,
        "n_missing": len(split_ids) - len(scored),
        "convention": "headline = IMG-accuracy (%): test problems with an image (SQA-IMG)",
    }
    return scoring_io.make_result(BENCHMARK, img_acc, metrics, len(scored))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--base-dir", required=True,
                        help="folder with problems.json and pid_splits.json")
    parser.add_argument("--split", default="test", help="key of pid_splits.json (default test)")
    args = parser.parse_args(argv)
    splits = scoring_io.read_json(os.path.join(args.base_dir, "pid_splits.json"))
    if args.split not in splits:
        raise ValueError(f"--split {args.split!r} not in pid_splits.json; choose from "
                         f"{sorted(splits)}")
    problems = scoring_io.read_json(os.path.join(args.base_dir, "problems.json"))
    result = score(scoring_io.read_jsonl(args.answers_file), problems,
                   [str(p) for p in splits[args.split]], allow_missing=args.allow_missing)
    m = result["metrics"]
    scoring_io.report(result, args.result_file, [
        f"accuracy (all) {m['accuracy']:.2f}, IMG {m['img_accuracy']:.2f} on {m['n_img']}; "
        f"unparsed {m['n_unparsed']}"])
    return result


if __name__ == "__main__":
    main()
