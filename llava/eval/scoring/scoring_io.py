"""Shared plumbing of the scorers: reading answers, checking coverage, writing results.

Every scorer CLI takes the same three flags from :func:`add_common_args`:

* ``--answers-file PATH [PATH ...]``: the model's answers, LLaVA JSONL (one object a line:
  ``question_id, prompt, text, answer_id, model_id, metadata``); several files (the chunks
  of a multi-GPU run) are read in order as if concatenated.
* ``--result-file OUT.json``: where to write ``{"benchmark", "headline", "metrics", "n"}``.
* ``--allow-missing``: score only the questions that were answered. Without it a question
  of the split with no answer is an error, because a lost chunk would otherwise lower the
  score silently (the official scripts either crash or count it wrong).

An answer for a question that is not in the benchmark, or two answers for one question, is
always an error: both mean the wrong files were passed.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

RESULT_KEYS = ("benchmark", "headline", "metrics", "n")


def read_jsonl(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict]:
    """Read one or more JSONL files; blank lines are skipped, a bad line names file:line."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records: list[dict] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {obj!r:.80}")
                records.append(obj)
    return records


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def require_fields(record: dict, fields: Iterable[str], what: str = "answer") -> None:
    missing = [k for k in fields if k not in record]
    if missing:
        raise ValueError(f"{what} record lacks field(s) {missing}: {json.dumps(record)[:200]}")


def index_by(records: Iterable[dict], key: Callable[[dict], Hashable], what: str = "answer") -> dict:
    """Map ``key(record) -> record``; a repeated key raises ValueError naming it."""
    out: dict = {}
    for rec in records:
        k = key(rec)
        if k in out:
            raise ValueError(f"two {what}s for the same question {k!r}: the answers files "
                             "overlap (was a chunk merged twice?)")
        out[k] = rec
    return out


def check_coverage(expected: Iterable[Hashable], answered: Iterable[Hashable], *,
                   allow_missing: bool, what: str) -> list:
    """Return the expected keys (in their order) that were answered.

    Raises ValueError for answered keys outside ``expected`` and, unless ``allow_missing``,
    for expected keys without an answer.
    """
    expected = list(expected)
    answered_set = set(answered)
    expected_set = set(expected)
    unknown = [k for k in answered_set if k not in expected_set]
    if unknown:
        raise ValueError(f"{len(unknown)} answer(s) for questions that are not in the {what} "
                         f"annotations, e.g. {sorted(map(str, unknown))[:5]}")
    missing = [k for k in expected if k not in answered_set]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} of {len(expected)} {what} questions have no answer, "
                         f"e.g. {[str(k) for k in missing[:5]]}; pass --allow-missing to score "
                         "only the answered ones")
    scored = [k for k in expected if k in answered_set]
    if not scored:
        raise ValueError(f"no {what} question was answered: nothing to score")
    return scored


def percent(numerator: float, denominator: float) -> float:
    """100 * numerator / denominator; a zero denominator raises (nothing to average)."""
    if denominator == 0:
        raise ValueError("percent of an empty set: denominator is 0")
    return 100.0 * numerator / denominator


def make_result(benchmark: str, headline: float, metrics: dict, n: int) -> dict:
    """The result-file object every scorer returns from ``score``."""
    return {"benchmark": benchmark, "headline": float(headline), "metrics": metrics, "n": int(n)}


def add_common_args(parser: argparse.ArgumentParser, *, answers_required: bool = True) -> None:
    parser.add_argument("--answers-file", nargs="+", required=answers_required, metavar="JSONL",
                        help="model answers in LLaVA JSONL; several chunk files are concatenated")
    parser.add_argument("--result-file", metavar="OUT.json",
                        help="write {benchmark, headline, metrics, n} here")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score only the answered questions instead of failing on missing ones")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def report(result: dict, result_file: str | None, lines: Sequence[str] = ()) -> None:
    """Print a short summary (headline first) and write the result file if asked."""
    for key in RESULT_KEYS:
        if key not in result:
            raise ValueError(f"result lacks {key!r}; keys are {sorted(result)}")
    print(f"{result['benchmark']}: headline {result['headline']:.2f} (n={result['n']})")
    for line in lines:
        print(f"  {line}")
    if result_file:
        write_json(result_file, result)
        print(f"  result written to {result_file}")


def question_text(prompt: str) -> str:
    """The question part of a LLaVA prompt: its first line (instructions follow on later lines)."""
    return prompt.split("\n", 1)[0].strip()
