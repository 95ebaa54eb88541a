"""MME: 14 yes/no subtasks scored as acc + acc+.

Official metric (Fu et al. 2023, "MME: A Comprehensive Evaluation Benchmark for Multimodal
Large Language Models"; ``eval_tool/calculation.py`` of the release). Every image has two
questions, one with answer Yes and one with No. Per subtask:
acc = right questions / questions, acc+ = images with both questions right / images,
score = 100 * acc + 100 * acc+ (max 200). Perception = sum over existence, count, position,
color, posters, celebrity, scene, landmark, artwork, OCR (max 2000); cognition = sum over
commonsense_reasoning, numerical_calculation, text_translation, code_reasoning (max 800).
A prediction is lower-cased; "yes"/"no" as is, otherwise its first 4 characters are
searched for "yes", then "no"; anything else is "other" (wrong).

Headline = perception + cognition (pruning-paper convention: 1862 for LLaVA-1.5-7B);
``metrics`` also has perception alone (LLaVA's model-zoo number, 1510.7) and cognition.

Files: answers come from LLaVA's ``llava_mme.jsonl`` run, whose ``question_id`` is the image
path ``<subtask>/[images/]<name>.<ext>`` (shared by the image's two questions) and whose
``prompt`` is the question. The ground truth is read from ``--data-dir
MME_Benchmark_release_version``: ``<subtask>/<name>.txt`` beside the image, or
``<subtask>/questions_answers_YN/<name>.txt`` for subtasks with an ``images/`` folder; each
line is ``question<TAB>Yes|No``. Questions are matched after dropping "Answer the question
using a single word or phrase." and "Please answer yes or no." and collapsing spaces (what
LLaVA's ``convert_answer_to_mme.py`` undoes). With ``--allow-missing`` only the subtasks and
images that were answered count (acc+ over images whose questions were all answered).

The figures equal LLaVA's pipeline (``convert_answer_to_mme.py``, then the release's
``eval_tool/calculation.py``): same parsing (the trailing newline ``calculation.py`` leaves on
each prediction cannot change its 4-character test), same acc and acc+. ``calculation.py``
forms acc+ pairs from consecutive lines; we pair the two questions of an image, the same
pairs for answers in the question file's order (as LLaVA's and our runs write them). An
answer holding a tab or newline breaks ``calculation.py``'s line format; here it is just
parsed. No ``--parser`` flag: there is no second reading.

CLI::

    python -m llava.eval.scoring.mme --answers-file A.jsonl [...]
        --data-dir MME_Benchmark_release_version [--result-file OUT.json] [--allow-missing]
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

from llava.eval.scoring import scoring_io

BENCHMARK = "mme"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
_PROMPT_SUFFIXES = ("Answer the question using a single word or phrase.",
                    "Please answer yes or no.")


def normalize_question(text: str) -> str:
    for suffix in _PROMPT_SUFFIXES:
        text = text.replace(suffix, " ")
    return " ".join(text.split())


def parse_yes_no(text: str) -> str:
    """The official MME rule: exact yes/no, else look for "yes" then "no" in 4 characters."""
    t = text.lower()
    if t in ("yes", "no"):
        return t
    head = t[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def _image_key(path: str) -> tuple[str, str]:
    """``"artwork/images/123.jpg"`` -> ``("artwork", "123")``."""
    parts = path.replace("\\", "/").split("/")
    return parts[0], os.path.splitext(parts[-1])[0]


def load_ground_truth(data_dir: str) -> dict[tuple[str, str, str], str]:
    """``{(subtask, image stem, normalised question): "yes"|"no"}`` for the subtasks found."""
    gt: dict[tuple[str, str, str], str] = {}
    for subtask in SUBTASKS:
        sub_dir = os.path.join(data_dir, subtask)
        if not os.path.isdir(sub_dir):
            continue
        qa_dir = (os.path.join(sub_dir, "questions_answers_YN")
                  if os.path.isdir(os.path.join(sub_dir, "images")) else sub_dir)
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(qa_dir, name), encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    question, sep, answer = line.rstrip("\n").rpartition("\t")
                    if not sep or answer.strip().lower() not in ("yes", "no"):
                        raise ValueError(f"{qa_dir}/{name}:{lineno}: expected "
                                         f"'question<TAB>Yes|No', got {line!r:.100}")
                    gt[(subtask, name[:-4], normalize_question(question))] = answer.strip().lower()
    if not gt:
        raise ValueError(f"{data_dir}: none of the MME subtask folders {list(SUBTASKS)} found")
    return gt


def score(answers: list[dict], ground_truth: dict, *, allow_missing: bool = False) -> dict:
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "prompt", "text"))

    def key(a: dict) -> tuple[str, str, str]:
        subtask, stem = _image_key(str(a["question_id"]))
        k = (subtask, stem, normalize_question(a["prompt"]))
        if k not in ground_truth:
            raise ValueError(f"answer {a['question_id']!r} / {a['prompt'][:60]!r} matches no "
                             "MME ground-truth question")
        return k

    by_key = scoring_io.index_by(answers, key)
    scored = scoring_io.check_coverage(list(ground_truth), by_key, allow_missing=allow_missing,
                                       what=BENCHMARK)
    scored_set = set(scored)
    questions_of_image: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for k in ground_truth:
        questions_of_image[k[:2]].append(k)
    per: dict[str, dict] = {}
    for subtask in SUBTASKS:
        keys = [k for k in scored if k[0] == subtask]
        if not keys:
            continue
        preds = {k: parse_yes_no(by_key[k]["text"]) for k in keys}
        right = {k: preds[k] == ground_truth[k] for k in keys}
        images = sorted({k[:2] for k in keys})
        complete = [im for im in images if all(q in scored_set for q in questions_of_image[im])]
        both = sum(all(right[q] for q in questions_of_image[im]) for im in complete)
        acc = sum(right.values()) / len(keys)
        acc_plus = both / len(complete) if complete else 0.0
        per[subtask] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus,
                        "score": 100 * acc + 100 * acc_plus, "n_questions": len(keys),
                        "n_images": len(complete),
                        "n_other": sum(p == "other" for p in preds.values())}
    perception = sum(per[s]["score"] for s in PERCEPTION if s in per)
    cognition = sum(per[s]["score"] for s in COGNITION if s in per)
    metrics = {
        "perception": perception, "cognition": cognition, "total": perception + cognition,
        "per_subtask": per,
        "subtasks_missing": [s for s in SUBTASKS if s not in per],
        "n_missing": len(ground_truth) - len(scored),
        "convention": "headline = perception + cognition (pruning-paper convention); "
                      "LLaVA's model zoo reports perception alone",
    }
    return scoring_io.make_result(BENCHMARK, perception + cognition, metrics, len(scored))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--data-dir", required=True, help="MME_Benchmark_release_version")
    args = parser.parse_args(argv)
    result = score(scoring_io.read_jsonl(args.answers_file), load_ground_truth(args.data_dir),
                   allow_missing=args.allow_missing)
    m = result["metrics"]
    lines = [f"perception {m['perception']:.2f}  cognition {m['cognition']:.2f}"]
    lines += [f"{s}: {v['score']:.2f} (acc {v['acc']:.1f}, acc+ {v['acc_plus']:.1f})"
              for s, v in m["per_subtask"].items()]
    if m["subtasks_missing"]:
        lines.append(f"subtasks not scored: {', '.join(m['subtasks_missing'])}")
    scoring_io.report(result, args.result_file, lines)
    return result


if __name__ == "__main__":
    main()
