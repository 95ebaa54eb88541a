"""Resumable answers files for the eval entry points.

A benchmark run on a 7B model takes hours; a killed job (pre-emption, OOM, Ctrl-C) must
not cost the answers already written, nor duplicate them when it is restarted. So every
answer is written as one JSON line and flushed at once, and on start the writer reads the
file back and reports which question keys are done; the entry point skips those.

The key of a record is its ``question_id`` (as a string, so ``7`` and ``"7"`` from
different question files cannot both slip in), plus what tells apart questions that share
an id: the prompt for LLaVA's JSONL question files (MME's id is the image path, shared by
the image's two questions; TextVQA's is the image id), the ``round_id`` for MMBench, whose
``--all-rounds`` mode answers one question once per rotation of its options.

Only the last line of a file can be partial (a kill in the middle of ``write``); it is
dropped with a message. A bad line anywhere else, or existing answers made with other
settings (another model, pruning or generation setting), raise ``ValueError``: appending
to them would mix two runs in one file without a trace.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Tuple

Key = Hashable


def question_key(record: Mapping[str, Any]) -> str:
    """Key of a LLaVA answer record: its question id as a string."""
    if "question_id" not in record:
        raise ValueError(f"answer record has no 'question_id': {json.dumps(record)[:200]}")
    return str(record["question_id"])


def question_prompt_key(record: Mapping[str, Any]) -> Tuple[str, str]:
    """Key of an answer to a LLaVA JSONL question: (question id, prompt = the question's text)."""
    if "prompt" not in record:
        raise ValueError(f"answer record has no 'prompt': {json.dumps(record)[:200]}")
    return question_key(record), record["prompt"]


def question_round_key(record: Mapping[str, Any]) -> Tuple[str, int]:
    """Key of an MMBench answer record: (question id, round of option rotation)."""
    return question_key(record), int(record.get("round_id", 0))


def read_answers(path: str) -> Tuple[List[Dict[str, Any]], int]:
    """Records of a JSONL answers file and the byte length of its complete lines.

    A last line without a newline that is not valid JSON is a write cut short by a kill;
    it is left out (the returned length stops before it). Any other bad line raises."""
    with open(path, "rb") as f:
        data = f.read()
    records: List[Dict[str, Any]] = []
    good_len = 0
    pos = 0
    lineno = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        last = end < 0
        line = data[pos:] if last else data[pos:end]
        lineno += 1
        next_pos = len(data) if last else end + 1
        if line.strip():
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                if last:
                    break  # partial final line: dropped by the caller
                raise ValueError(f"{path}:{lineno}: not a valid JSON line ({err}); "
                                 "fix or delete the answers file") from err
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {obj!r:.80}")
            records.append(obj)
        pos = next_pos
        good_len = pos
    return records, good_len


class AnswerWriter:
    """Append-only JSONL writer that knows which questions a previous run answered.

    ``settings`` (e.g. ``{"model_id": ..., "metadata.pruning": ...}``) are checked against
    every existing record: a key ``"a.b"`` reads ``record["a"]["b"]``. Use as a context
    manager; ``done(key)`` tells whether to skip a question, ``write(record)`` appends it."""

    def __init__(self, path: str, key_fn: Callable[[Mapping[str, Any]], Key] = question_key,
                 settings: Optional[Mapping[str, Any]] = None):
        self.path = path
        self.key_fn = key_fn
        # through JSON, as the values read back from the file went (tuples become lists)
        self.settings = json.loads(json.dumps(dict(settings or {})))
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._done: set = set()
        self.n_existing = 0
        if os.path.exists(path):
            records, good_len = read_answers(path)
            if good_len < os.path.getsize(path):
                print(f"[answers] {path}: dropping a partial last line (a run was killed while "
                      "writing it); that question is answered again", file=sys.stderr)
                with open(path, "r+b") as f:
                    f.truncate(good_len)
            for lineno, rec in enumerate(records, 1):
                self._check_settings(rec, lineno)
                key = key_fn(rec)
                if key in self._done:
                    raise ValueError(f"{path}: question {key!r} is answered twice; the file was "
                                     "written by something else than a resumable run")
                self._done.add(key)
            self.n_existing = len(records)
            self._ensure_newline()
        self._file = open(path, "a", encoding="utf-8")

    def _ensure_newline(self) -> None:
        size = os.path.getsize(self.path)
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            last = f.read(1)
        if last != b"\n":  # a complete JSON object that only lacked its newline
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def _check_settings(self, record: Mapping[str, Any], lineno: int) -> None:
        for dotted, expected in self.settings.items():
            value: Any = record
            for part in dotted.split("."):
                value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
            if value != expected:
                raise ValueError(
                    f"{self.path}:{lineno}: existing answer has {dotted}={_short(value)}, this run "
                    f"has {dotted}={_short(expected)}; resuming would mix two settings in one file. "
                    "Write to another --answers-file or delete this one.")

    def done(self, key: Key) -> bool:
        return key in self._done

    def pending(self, items, key_of: Callable[[Any], Key]) -> list:
        """The items whose key has no answer yet; says how many were kept from an earlier run."""
        todo = [item for item in items if not self.done(key_of(item))]
        if self.n_existing:
            print(f"[eval] {self.path}: {self.n_existing} answers kept, {len(todo)} to go", flush=True)
        return todo

    @property
    def done_keys(self) -> frozenset:
        return frozenset(self._done)

    def write(self, record: Mapping[str, Any]) -> None:
        key = self.key_fn(record)
        if key in self._done:
            raise ValueError(f"question {key!r} is already in {self.path}")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()  # the line survives a kill of this process from here on
        self._done.add(key)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _short(value: Any) -> str:
    text = repr(value) if value is _MISSING else json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."
