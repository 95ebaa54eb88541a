"""MMBench / MMBench-CN (dev): circular multiple-choice accuracy, and the upload file.

Official metric (Liu et al. 2023, "MMBench: Is Your Multi-modal Model an All-around
Player?", CircularEval; OpenCompass / VLMEvalKit ``mmbench_evaluation``): a question with N
options is asked N times with the options rotated; it counts right only if every pass picks
the right option. Accuracy overall and per ``category`` (and ``l2-category``) in %.
Headline = circular accuracy % (LLaVA-1.5-7B: MMB 64.3 zoo / 64.7 pruning papers, MMB-CN
58.3 / 58.1).

Two ways the passes reach us, both handled:

* the released dev TSVs (``mmbench_dev_20230712.tsv``, ``mmbench_dev_cn_20231003.tsv``)
  already hold the rotated copies as extra rows with ``index`` = original + k * 1,000,000 and
  their own ``answer``; LLaVA's ``model_vqa_mmbench.py`` answers every row once
  (``round_id`` 0), and passes are grouped by ``index % 1_000_000``;
* ``model_vqa_mmbench.py --all-rounds`` answers each row N times (``round_id`` r shows the
  options rotated left by r: letter j then means original option (j + r) mod N).

The options of a row are A, B, C, D up to the first empty one (NaN, "nan" or "none", LLaVA's
``get_options`` rule); an answer's ``options`` list, when present, must equal that rotation.
Letters are read with :func:`choices.parse_option_letter` (letter, "B. ...", or exactly one
option's text); an unreadable answer is wrong (``n_unparsed``). VLMEvalKit additionally asks
ChatGPT to map unreadable answers; we do not. ``single_pass_accuracy`` is the plain
accuracy of the original rows' first pass.

``--submission-file`` writes the TSV's rows without the image (and the columns LLaVA drops)
plus a ``prediction`` column (the round-0 answer text), as LLaVA's
``convert_mmbench_for_submission.py`` does: ``.xlsx`` when openpyxl is installed, otherwise a
``.tsv`` beside the requested path (a message says so). The test split has no ``answer``
column, so it can only be converted, not scored. Two differences from LLaVA's converter, both
where it fails: it crashes (openpyxl's ``IllegalCharacterError``) on an answer holding a
control character that XLSX cannot store, so in an ``.xlsx`` we delete those characters --
U+0000-U+0008, U+000B, U+000C, U+000E-U+001F, openpyxl's ``ILLEGAL_CHARACTERS_RE`` -- from
every text cell (tab, newline and carriage return stay; the ``.tsv`` keeps everything) and
print how many cells changed; and with ``--all-rounds`` answers its "last line wins" loop
would upload the last rotation's answer, while we upload round 0's, whose letters refer to
the options as the TSV lists them.

This local score has no official twin (the MMBench server maps unreadable answers with
ChatGPT); its rules are the CircularEval ones above.

CLI::

    python -m llava.eval.scoring.mmbench --answers-file A.jsonl [...]
        --question-file mmbench_dev_20230712.tsv [--name mmbench|mmbench_cn]
        [--submission-file answers_upload/MODEL.xlsx] [--result-file OUT.json]
        [--allow-missing] [--no-score]

``--no-score`` only converts (needed for the test TSV, which has no answers).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
from collections import defaultdict

from llava.eval.scoring import scoring_io
from llava.eval.scoring.choices import LETTERS, parse_option_letter

CIRCULAR_STRIDE = 1_000_000
OPTION_COLUMNS = ("A", "B", "C", "D")
UPLOAD_DROP_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
# The characters openpyxl refuses in a cell (its ILLEGAL_CHARACTERS_RE): C0 controls other
# than tab, newline and carriage return.
XLSX_ILLEGAL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def xlsx_safe(value):
    """``value`` with the characters an XLSX cell cannot hold deleted (non-strings as is)."""
    return XLSX_ILLEGAL_CHARACTERS.sub("", value) if isinstance(value, str) else value


def _is_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("nan", "none")


def row_options(row: dict) -> list[str]:
    """Option texts A, B, ... up to the first empty one (LLaVA's ``get_options``)."""
    options = []
    for col in OPTION_COLUMNS:
        if col not in row or _is_none(row[col]):
            break
        options.append(str(row[col]))
    if not options:
        raise ValueError(f"MMBench row {row.get('index')!r} has no options")
    return options


def load_rows(path: str) -> list[dict]:
    """The TSV as a list of row dicts (``index`` as int)."""
    import pandas as pd

    df = pd.read_csv(path, sep="\t")
    if "index" not in df.columns:
        raise ValueError(f"{path}: no 'index' column; columns are {list(df.columns)}")
    rows = df.to_dict("records")
    for r in rows:
        r["index"] = int(r["index"])
    return rows


def score(answers: list[dict], rows: list[dict], *, allow_missing: bool = False,
          benchmark: str = "mmbench") -> dict:
    """Circular accuracy of ``answers`` (LLaVA MMBench JSONL) on the TSV ``rows``."""
    row_by_index = scoring_io.index_by(rows, lambda r: r["index"], what="TSV row")
    if any(_is_none(r.get("answer")) for r in rows):
        raise ValueError("the TSV has rows without an 'answer' (a test split?): it can only be "
                         "converted with --submission-file, not scored")
    for a in answers:
        scoring_io.require_fields(a, ("question_id", "text"))
    by_key = scoring_io.index_by(answers, lambda a: (int(a["question_id"]), int(a.get("round_id", 0))))
    rows_answered = {idx for idx, _ in by_key}
    answered = scoring_io.check_coverage(list(row_by_index), rows_answered,
                                         allow_missing=allow_missing, what=benchmark)
    rounds_of: dict[int, set[int]] = defaultdict(set)
    for idx, r in by_key:
        rounds_of[idx].add(r)

    row_ok: dict[int, bool] = {}
    first_pass_ok: dict[int, bool] = {}
    n_records = unparsed = 0
    for idx in answered:
        row = row_by_index[idx]
        options = row_options(row)
        n = len(options)
        if rounds_of[idx] not in ({0}, set(range(n))):
            raise ValueError(f"row {idx} has answers for rounds {sorted(rounds_of[idx])}; expected "
                             f"round 0 only or all rounds 0..{n - 1}")
        truth = LETTERS.index(str(row["answer"]).strip())
        ok_all = True
        for r in sorted(rounds_of[idx]):
            rec = by_key[(idx, r)]
            rotated = options[r:] + options[:r]
            if "options" in rec and [str(o) for o in rec["options"]] != rotated:
                raise ValueError(f"answer ({idx}, round {r}) lists options {rec['options']}, but "
                                 f"rotating the TSV row by {r} gives {rotated}")
            letter = parse_option_letter(rec["text"], n, rotated)
            unparsed += letter is None
            ok = letter is not None and (LETTERS.index(letter) + r) % n == truth
            n_records += 1
            ok_all &= ok
            if r == 0:
                first_pass_ok[idx] = ok
        row_ok[idx] = ok_all

    rows_of_group: dict[int, list[int]] = defaultdict(list)
    for idx in row_by_index:
        rows_of_group[idx % CIRCULAR_STRIDE].append(idx)
    complete = [g for g, members in rows_of_group.items() if all(m in row_ok for m in members)]
    if not complete:
        raise ValueError("no MMBench question has answers for all of its circular copies")
    hit: dict[int, bool] = {g: all(row_ok[m] for m in rows_of_group[g]) for g in complete}
    passes = {g: sum(len(rounds_of[m]) for m in rows_of_group[g]) for g in complete}

    def main_row(g: int) -> dict:
        return row_by_index[g] if g in row_by_index else row_by_index[min(rows_of_group[g])]

    def grouped(column: str) -> dict[str, float]:
        buckets: dict[str, list[bool]] = defaultdict(list)
        for g in complete:
            value = main_row(g).get(column)
            if not _is_none(value):
                buckets[str(value)].append(hit[g])
        return {k: scoring_io.percent(sum(v), len(v)) for k, v in sorted(buckets.items())}

    originals = [g for g in complete if g in first_pass_ok]
    circular = scoring_io.percent(sum(hit.values()), len(complete))
    metrics = {
        "circular_accuracy": circular,
        "single_pass_accuracy": (scoring_io.percent(sum(first_pass_ok[g] for g in originals),
                                                    len(originals)) if originals else None),
        "accuracy_per_category": grouped("category"),
        "accuracy_per_l2_category": grouped("l2-category"),
        "passes_per_question_min": min(passes.values()),
        "passes_per_question_mean": sum(passes.values()) / len(passes),
        "n_answers": n_records,
        "n_unparsed": unparsed,
        "n_missing": len(rows_of_group) - len(complete),
        "convention": "headline = CircularEval accuracy (%): right only if every rotation "
                      "is right; passes_per_question_min == 1 means no rotation was asked",
    }
    return scoring_io.make_result(benchmark, circular, metrics, len(complete))


def write_submission(answers: list[dict], tsv_path: str, out_path: str) -> str:
    """Write the upload table; returns the path actually written (.xlsx or .tsv)."""
    import pandas as pd

    df = pd.read_csv(tsv_path, sep="\t")
    first_pass = {int(a["question_id"]): a["text"] for a in answers if int(a.get("round_id", 0)) == 0}
    out = df.drop(columns=[c for c in UPLOAD_DROP_COLUMNS if c in df.columns])
    out.insert(min(6, len(out.columns)), "prediction",
               [first_pass.get(int(i)) for i in df["index"]])
    parent = os.path.dirname(out_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if out_path.endswith(".xlsx"):
        if importlib.util.find_spec("openpyxl") is not None:
            n_changed = 0
            for col in out.columns:
                dirty = out[col].map(lambda v: isinstance(v, str)
                                     and XLSX_ILLEGAL_CHARACTERS.search(v) is not None)
                if dirty.any():
                    n_changed += int(dirty.sum())
                    out[col] = out[col].map(xlsx_safe)
            if n_changed:
                print(f"{n_changed} cell(s) held control characters an .xlsx cannot store; "
                      "they were deleted (see the module doc)")
            out.to_excel(out_path, index=False, engine="openpyxl")
            return out_path
        tsv_out = out_path[: -len(".xlsx")] + ".tsv"
        print(f"openpyxl is not installed: writing {tsv_out} instead of {out_path} "
              "(pip install openpyxl for the .xlsx the MMBench server asks for)")
        out_path = tsv_out
    out.to_csv(out_path, sep="\t", index=False)
    return out_path


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scoring_io.add_common_args(parser)
    parser.add_argument("--question-file", required=True, help="the MMBench TSV that was run")
    parser.add_argument("--name", choices=("mmbench", "mmbench_cn"),
                        help="benchmark name in the result (default: mmbench_cn when the TSV "
                             "name contains '_cn', else mmbench)")
    parser.add_argument("--submission-file", help="write the upload .xlsx (or .tsv) here")
    parser.add_argument("--no-score", action="store_true",
                        help="only write --submission-file (test split: no answers to score)")
    args = parser.parse_args(argv)
    if args.no_score and not args.submission_file:
        parser.error("--no-score needs --submission-file: there is nothing else to do")
    name = args.name or ("mmbench_cn" if "_cn" in os.path.basename(args.question_file)
                         else "mmbench")
    answers = scoring_io.read_jsonl(args.answers_file)
    if args.submission_file:
        written = write_submission(answers, args.question_file, args.submission_file)
        print(f"{name}: upload table written to {written}")
    if args.no_score:
        if args.result_file:
            parser.error("--result-file and --no-score exclude each other")
        return None
    result = score(answers, load_rows(args.question_file), allow_missing=args.allow_missing,
                   benchmark=name)
    m = result["metrics"]
    single = m["single_pass_accuracy"]
    lines = [f"single pass {'n/a' if single is None else f'{single:.2f}'}; passes per "
             f"question min {m['passes_per_question_min']}, unparsed {m['n_unparsed']}"]
    lines += [f"{c}: {v:.1f}" for c, v in m["accuracy_per_category"].items()]
    scoring_io.report(result, args.result_file, lines)
    return result


if __name__ == "__main__":
    main()
