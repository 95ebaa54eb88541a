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

One run writes a file at a time (an exclusive lock, see :class:`AnswersLock`), and every
record carries the settings a resume must match, the model's weight fingerprint among them
(:func:`model_fingerprint`): the same folder name is not the same model.

Only the last line of a file can be partial (a kill in the middle of ``write``); it is
dropped with a message. A bad line anywhere else, or existing answers made with other
settings (another model, pruning or generation setting), raise ``ValueError``: appending
to them would mix two runs in one file without a trace.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import time
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
    every existing record: a key ``"a.b"`` reads ``record["a"]["b"]``; a record written
    without one of them gets it (``write`` fills in what the record lacks, so that a
    later run can check it). Settings only known once the model is loaded can be given
    later with :meth:`expect`. Use as a context manager; ``done(key)`` tells whether to skip
    a question, ``write(record)`` appends it.

    One run at a time: the writer holds an exclusive lock (a POSIX ``fcntl.lockf`` lock on
    ``<path>.lock``, which holds the PID of the run) from construction to ``close``. A
    second writer on the same file raises ``ValueError`` naming the holder's PID, or with
    ``wait=True`` waits until the first one is done."""

    def __init__(self, path: str, key_fn: Callable[[Mapping[str, Any]], Key] = question_key,
                 settings: Optional[Mapping[str, Any]] = None, wait: bool = False):
        self.path = path
        self.key_fn = key_fn
        self.settings: Dict[str, Any] = {}
        check_answers_path(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._lock = AnswersLock(path, wait=wait)
        self._file = None
        try:
            self._load_existing()
            self.expect(settings or {})
            self._file = open(path, "a", encoding="utf-8")
        except BaseException:
            self._lock.release()
            raise

    def _load_existing(self) -> None:
        self._done: set = set()
        self._records: List[Dict[str, Any]] = []
        self.n_existing = 0
        if not os.path.exists(self.path):
            return
        records, good_len = read_answers(self.path)
        if good_len < os.path.getsize(self.path):
            print(f"[answers] {self.path}: dropping a partial last line (a run was killed while "
                  "writing it); that question is answered again", file=sys.stderr)
            with open(self.path, "r+b") as f:
                f.truncate(good_len)
        for rec in records:
            key = self.key_fn(rec)
            if key in self._done:
                raise ValueError(f"{self.path}: question {key!r} is answered twice; the file was "
                                 "written by something else than a resumable run")
            self._done.add(key)
        self._records = records
        self.n_existing = len(records)
        self._ensure_newline()

    def expect(self, settings: Mapping[str, Any]) -> None:
        """Add ``settings`` to what existing and new records must match; existing records
        that differ raise ``ValueError`` naming both values."""
        # through JSON, as the values read back from the file went (tuples become lists)
        new = json.loads(json.dumps(dict(settings)))
        for lineno, rec in enumerate(self._records, 1):
            self._check_settings(rec, lineno, new)
        self.settings.update(new)

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

    def _check_settings(self, record: Mapping[str, Any], lineno: int, settings: Mapping[str, Any]) -> None:
        for dotted, expected in settings.items():
            value = _get(record, dotted)
            if value != expected:
                hint = SETTING_HINTS.get(dotted, "")
                raise ValueError(
                    f"{self.path}:{lineno}: existing answer has {dotted}={_short(value)}, this run "
                    f"has {dotted}={_short(expected)}{hint}; resuming would mix two settings in one file. "
                    "Write to another --answers-file or delete this one.")

    def done(self, key: Key) -> bool:
        return key in self._done

    def pending(self, items, key_of: Callable[[Any], Key]) -> list:
        """The items whose key has no answer yet; says how many were kept from an earlier run."""
        todo = [item for item in items if not self.done(key_of(item))]
        if self.n_existing:
            print(f"[eval] {self.path}: {self.n_existing} answers kept, {len(todo)} to go", flush=True)
        return todo

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None or self._file.closed:
            raise ValueError(f"the answers writer of {self.path} is closed")
        key = self.key_fn(record)
        if key in self._done:
            raise ValueError(f"question {key!r} is already in {self.path}")
        record = _with_settings(record, self.settings)
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()  # the line survives a kill of this process from here on
        self._done.add(key)

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        finally:
            self._lock.release()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Said after a mismatch of these settings.
SETTING_HINTS = {
    "metadata.model_fingerprint": " (a hash of the checkpoint's config.json and its weight files' names, sizes "
                                  "and mtimes: the weights under this path are not the ones that wrote the file)",
}


def check_answers_path(path: str) -> None:
    """A usable answers file path, checked before anything expensive: not a folder, in a
    folder (or a place one can be made)."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"--answers-file {path!r} must be a file path")
    if os.path.isdir(path):
        raise ValueError(f"--answers-file {path} is a directory; give the path of a .jsonl file (in it or elsewhere)")
    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"--answers-file {path}: {probe} is a file, so the folder {parent} cannot be made")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"--answers-file {path} is not a regular file")


# ---------------------------------------------------------------- one run per answers file
class AnswersLock:
    """Exclusive lock on ``<answers>.lock`` for the life of a run; the file holds the
    holder's PID and is removed on release. The lock dies with the process (a killed run
    leaves no stale lock), and forked children (DataLoader workers) never hold it (POSIX
    record locks are not inherited), so a child that outlives the run cannot keep it. The
    one POSIX caveat, that closing ANY descriptor of the file drops the lock, is why this
    process never opens the lock file twice (``_HELD``)."""

    def __init__(self, answers_path: str, wait: bool = False):
        self.answers_path = answers_path
        self.path = answers_path + ".lock"
        self.fd: Optional[int] = None
        key = os.path.realpath(self.path)
        if key in _HELD:
            raise ValueError(f"{answers_path} is already open for writing in this process")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _try_lock(fd):
                    holder = _holder(fd)
                    if not wait:
                        raise ValueError(
                            f"{answers_path} is being written by another run (PID {holder}; lock file {self.path}). "
                            "Two runs on one answers file would answer its questions twice: wait for that run to "
                            "finish or stop it, or pass --wait-for-lock to wait for it")
                    print(f"[answers] {answers_path} is being written by PID {holder}; waiting for it to finish",
                          file=sys.stderr, flush=True)
                    fcntl.lockf(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # the holder removed the file as we waited on it: lock the new one
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            break
        self.fd = fd
        self._key = key
        _HELD[key] = fd

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD.pop(self._key, None)
        try:
            os.unlink(self.path)  # while still locked, so nobody locks a file that is going away
        except FileNotFoundError:
            pass
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
            os.close(fd)


_HELD: Dict[str, int] = {}  # lock file -> fd, the locks this process holds


def _try_lock(fd: int) -> bool:
    # A POSIX record lock (lockf), not flock: it belongs to this process and is never
    # inherited by a fork, so a DataLoader worker forked a moment before the run is killed
    # cannot keep the file locked, however late it runs its at-fork handler.
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise


def _holder(fd: int) -> str:
    """The PID written in a lock file (the holder writes it right after locking)."""
    deadline = time.monotonic() + 1.0
    while True:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text or time.monotonic() > deadline:
            return text or "unknown"
        time.sleep(0.02)


def _drop_locks_in_child() -> None:
    # A forked child shares the parent's lock; closing its copy leaves the parent's intact.
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


# ---------------------------------------------------------------- model fingerprint
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".index.json", ".model")
HASHED_CONFIGS = ("config.json", "adapter_config.json")


def model_fingerprint(model_path: str, model_base: Optional[str] = None) -> str:
    """A short hash that changes when the weights under ``model_path`` (and ``model_base``)
    change: the content of ``config.json`` / ``adapter_config.json`` plus the names, sizes
    and mtimes of the weight files (shards, their index, ``mm_projector.bin``, LoRA
    adapters, ``tokenizer.model``), without reading the weights. A hub id is resolved to
    its snapshot in the local cache (load the model first)."""
    digest = hashlib.sha256()
    for role, path in (("model", model_path), ("base", model_base)):
        if path is None:
            continue
        folder = _local_folder(path)
        digest.update(f"{role}\0".encode())
        for name in sorted(os.listdir(folder)):
            full = os.path.join(folder, name)
            if not os.path.isfile(full):
                continue
            if name in HASHED_CONFIGS:
                with open(full, "rb") as f:
                    digest.update(f"{name}\0".encode() + hashlib.sha256(f.read()).digest())
            elif name.endswith(WEIGHT_SUFFIXES):
                st = os.stat(full)
                digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def _local_folder(path: str) -> str:
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ValueError(f"model folder {path} has no config.json; it cannot be fingerprinted (nor loaded)")
        return expanded
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001 (any failure: not in the cache)
        raise ValueError(f"model {path!r} is neither a folder nor a hub id in the local cache ({err}); "
                         "its weights cannot be fingerprinted") from err


def _get(record: Mapping[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
    return value


def _with_settings(record: Mapping[str, Any], settings: Mapping[str, Any]) -> Dict[str, Any]:
    """``record`` plus every setting it lacks (nested dicts copied, never the caller's changed)."""
    out = dict(record)
    for dotted, value in settings.items():
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                break
            node[part] = child = dict(child)
            node = child
        else:
            node.setdefault(parts[-1], value)
    return out


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _short(value: Any) -> str:
    text = repr(value) if value is _MISSING else json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def add_lock_arg(parser):
    """``--wait-for-lock``: wait for another run on the same answers file instead of refusing."""
    parser.add_argument("--wait-for-lock", action="store_true",
                        help="if another run is writing --answers-file, wait for it to finish instead of refusing "
                             "(its answers are then kept and skipped)")
    return parser
