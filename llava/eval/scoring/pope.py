"""POPE (COCO; adversarial / popular / random): yes/no hallucination probing.

Official metric (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language
Models"; LLaVA's ``eval_pope.py``): per split, parse yes/no from the answer, take "yes" as
the positive class, and report accuracy, precision, recall, F1 and the yes-ratio (share of
"yes" predictions). LLaVA's parsing rule, kept exactly: keep the text before the first
period, delete commas, split on spaces; if one of the words is "No", "no" or "not" the
answer is "no", otherwise "yes" (so an unrelated answer counts as "yes").

Headline = mean F1 over the splits present, in % (the pruning-paper convention: LLaVA-1.5-7B
85.9 over the three COCO splits); ``metrics`` states it and also gives each split's numbers
and the mean accuracy. Precision (recall) with no predicted (actual) positives is 0 here;
LLaVA's script would divide by zero.

Files (LLaVA layout): ``--question-file llava_pope_test.jsonl`` gives each question's split
in ``category``; ``--annotation-dir coco`` holds ``coco_pope_<split>.json`` (JSON lines with
``image``, ``text``, ``label``). LLaVA pairs answers and labels by position; we pair them by
(split, image, question text), which gives the same pairs whenever the answers come in the
question file's order (as LLaVA's and our runs write them, chunks merged in order) and does
not depend on order otherwise (where LLaVA's pairing would score answers against other
questions' labels).

The per-split figures equal LLaVA's ``llava/eval/eval_pope.py`` (same parsing rule, same
counts); there is no ``--parser`` flag because there is no second reading. The mean-F1
headline is the pruning papers' summary of those figures.

CLI::

    python -m llava.eval.scoring.pope --answers-file A.jsonl [...]
        --question-file llava_pope_test.jsonl --annotation-dir coco
        [--result-file OUT.json] [--allow-missing]
"""

from __future__ import annotations

import argparse
import os

from llava.eval.scoring import scoring_io

BENCHMARK = "pope"
SPLITS = ("adversarial", "popular", "random")
_NO_WORDS = frozenset({"No", "no", "not"})


def parse_yes_no(text: str) -> str:
    """LLaVA's POPE rule: first sentence, commas out, any of No/no/not among the words -> no."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if _NO_WORDS.intersection(words) else "yes"


def binary_metrics(preds: list[str], labels: list[str]) -> dict:
    """Accuracy / precision / recall / F1 / yes-ratio with "yes" as positive, as fractions."""
    if len(preds) != len(labels) or not preds:
        raise ValueError(f"need equally many (>0) predictions and labels, got "
                         f"{len(preds)} and {len(labels)}")
    for v in (*preds, *labels):
        if v not in ("yes", "no"):
            raise ValueError(f"labels and predictions must be 'yes' or 'no', got {v!r}")
    tp = sum(p == "yes" and y == "yes" for p, y in zip(preds, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(preds, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(preds, labels))
    fn = sum(p == "no" and y == "yes" for p, y in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"TP": tp, "FP": fp, "TN": tn, "FN": fn, "accuracy": (tp + tn) / len(preds),
            "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(preds), "n": len(preds)}


def load_labels(annotation_dir: str) -> dict[str, list[dict]]:
    """``{split: [label rows]}`` from ``coco_pope_<split>.json`` files (JSON lines)."""
    out = {}
    for name in sorted(os.listdir(annotation_dir)):
        if name.startswith("coco_pope_") and name.endswith(".json"):
            out[name[len("coco_pope_"):-len(".json")]] = scoring_io.read_jsonl(
                os.path.join(annotation_dir, name))
    if not out:
        raise ValueError(f"{annotation_dir}: no coco_pope_<split>.json files")
    return out


def score(answers: list[dict], questions: list[dict], labels: dict[str, list[dict]], *,
          allow_missing: bool = False) -> dict:
    """Per-split metrics and the mean-F1 headline.

    ``questions``: rows of ``llava_pope_test.jsonl``; ``labels``: ``load_labels`` output.
    """
    label_of: dict[tuple, str] = {}
    for split, rows in labels.items():
        for row in rows:
            key = (split, row["image"], row["text"].strip())
            if label_of.get(key, row["label"]) != row["label"]:
                raise ValueError(f"conflicting labels for {key}")
            label_of[key] = row["label"]
    q_by_id = scoring_io.index_by(questions, lambda q: str(q["question_id"]), what="question")
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_id = scoring_io.index_by(answers, lambda a: str(a["question_id"]))
    scored = scoring_io.check_coverage(list(q_by_id), by_id, allow_missing=allow_missing,
                                       what=BENCHMARK)
    preds: dict[str, list[str]] = {}
    truth: dict[str, list[str]] = {}
    for qid in scored:
        q = q_by_id[qid]
        key = (q["category"], q["image"], scoring_io.question_text(q["text"]))
        if key not in label_of:
            raise ValueError(f"question {qid} {key} has no label in coco_pope_{q['category']}.json")
        preds.setdefault(q["category"], []).append(parse_yes_no(by_id[qid]["text"]))
        truth.setdefault(q["category"], []).append(label_of[key])
    per_split = {s: binary_metrics(preds[s], truth[s]) for s in sorted(preds)}
    mean_f1 = 100.0 * sum(m["f1"] for m in per_split.values()) / len(per_split)
    metrics = {
        "per_split": per_split,
        "f1_mean": mean_f1,
        "accuracy_mean": 100.0 * sum(m["accuracy"] for m in per_split.values()) / len(per_split),
        "splits": sorted(per_split),
        "n_missing": len(q_by_id) - len(scored),
        "convention": "headline = mean F1 (%) over the POPE splits present "
                      "(pruning-paper convention; per-split numbers are fractions)",
    }
    return scoring_io.make_result(BENCHMARK, mean_f1, metrics, len(scored))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--question-file", required=True, help="llava_pope_test.jsonl")
    parser.add_argument("--annotation-dir", required=True, help="folder of coco_pope_*.json")
    args = parser.parse_args(argv)
    result = score(scoring_io.read_jsonl(args.answers_file),
                   scoring_io.read_jsonl(args.question_file),
                   load_labels(args.annotation_dir), allow_missing=args.allow_missing)
    scoring_io.report(result, args.result_file, [
        f"{s}: F1 {100 * m['f1']:.2f} acc {100 * m['accuracy']:.2f} "
        f"P {100 * m['precision']:.2f} R {100 * m['recall']:.2f} yes {m['yes_ratio']:.3f}"
        for s, m in result["metrics"]["per_split"].items()])
    return result


if __name__ == "__main__":
    main()
