"""Shared plumbing of the scorers: reading answers, checking coverage, writing results.

Every scorer CLI takes the same three flags from :func:`add_common_args`:

* ``--answers-file PATH [PATH ...]``: the model's answers, LLaVA JSONL (one object a line:
  ``question_id, prompt, text, answer_id, model_id, metadata``); several files (the chunks
  of a multi-GPU run) are read in order as if concatenated.
* ``--result-file OUT.json``: where to write ``{"benchmark", "headline", "metrics", "n"}``
  (plus ``parser`` and ``lenient`` with ``--parser lenient``, see below).
* ``--allow-missing``: score only the questions that were answered. Without it a question
  of the split with no answer is an error, because a lost chunk would otherwise lower the
  score silently (the official scripts either crash or count it wrong).

An answer for a question that is not in the benchmark, or two answers for one question, is
always an error: both mean the wrong files were passed.

The scorers whose official evaluator parses answers more strictly than we used to (VQAv2,
TextVQA, GQA, ScienceQA, SEED) also take ``--parser {official,lenient}`` (:func:`add_parser_arg`).
The default, ``official``, gives exactly the official evaluator's figures. ``lenient`` keeps
those as the result's ``headline`` / ``metrics`` (so tables stay comparable) and adds, never
instead, the lenient figures beside them (:func:`with_lenient`)::

    {"benchmark", "headline", "metrics", "n",            # official, as always
     "parser": "lenient",                                # only with --parser lenient
     "lenient": {"headline", "metrics", "n"}}            # only with --parser lenient

The official scorers also refuse an answers file whose ``question_id`` types differ from
the ones the official evaluator looks up (e.g. ``"101"`` where it looks up ``101``): the
official code silently scores such answers 0 (:func:`check_id_types`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

RESULT_KEYS = ("benchmark", "headline", "metrics", "n")
# Present only in results made with ``--parser lenient`` (see the module doc).
LENIENT_RESULT_KEYS = ("parser", "lenient")
PARSERS = ("official", "lenient")


def parse_jsonl(lines: Iterable[str], path: str | os.PathLike) -> list[dict]:
    """JSON objects, one a line; blank lines are skipped, a bad line names file:line."""
    records: list[dict] = []
    for lineno, line in enumerate(lines, 1):
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


def read_jsonl(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict]:
    """Read one or more JSONL files (see :func:`parse_jsonl`)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records: list[dict] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            records += parse_jsonl(f, path)
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


def with_lenient(official: dict, lenient: dict) -> dict:
    """The official result with the lenient figures beside it (``--parser lenient``)."""
    if official["benchmark"] != lenient["benchmark"]:
        raise ValueError(f"official and lenient results are for different benchmarks: "
                         f"{official['benchmark']!r} vs {lenient['benchmark']!r}")
    return {**official, "parser": "lenient",
            "lenient": {"headline": float(lenient["headline"]), "metrics": lenient["metrics"],
                        "n": int(lenient["n"])}}


def add_parser_arg(parser: argparse.ArgumentParser, lenient_help: str) -> None:
    """``--parser {official,lenient}``, default official; ``lenient_help``: what lenient adds."""
    parser.add_argument("--parser", choices=PARSERS, default="official",
                        help="official (default): exactly the official evaluator's rules; "
                             "lenient: also report, beside the official figures, "
                             + lenient_help)


def check_id_types(answers: Iterable[dict], official_keys: Iterable[Hashable], *,
                   what: str) -> None:
    """Raise when an answer's ``question_id`` equals an official key only as a string.

    The official evaluators look answers up by the id exactly as they load it (SEED: the
    int of the annotation's id; ScienceQA: the problem-id string; VQAv2: the question
    file's int), so ``"101"`` never finds ``101`` and the question silently scores 0.
    """
    keys = set(official_keys)
    as_str = {str(k): k for k in keys}
    bad = [(a["question_id"], as_str[str(a["question_id"])]) for a in answers
           if a["question_id"] not in keys and str(a["question_id"]) in as_str]
    if bad:
        got, want = bad[0]
        raise ValueError(
            f"{len(bad)} {what} answer(s) have question_id {got!r} ({type(got).__name__}) "
            f"where the official evaluator looks up {want!r} ({type(want).__name__}); it "
            "would score them 0. Answer the question file whose ids have the official type "
            "(e.g. LLaVA's llava-seed-bench.jsonl has int ids) or fix the ids")


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
    if result.get("parser") == "lenient":
        print(f"  lenient parser (not the official figure): headline "
              f"{result['lenient']['headline']:.2f} (n={result['lenient']['n']})")
    for line in lines:
        print(f"  {line}")
    if result_file:
        write_json(result_file, result)
        print(f"  result written to {result_file}")


def question_text(prompt: str) -> str:
    """The question part of a LLaVA prompt: its first line (instructions follow on later lines)."""
    return prompt.split("\n", 1)[0].strip()
