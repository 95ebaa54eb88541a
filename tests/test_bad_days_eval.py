"""Bad days for the eval entry points (issue 12, items 7, 8 and 16): one run per answers
file (a lock naming the holder's PID), workers that die with their launcher, answers tied
to the weights that wrote them (a fingerprint, not the folder's name), and bad input
refused with a clear error before the model loads."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llava.eval.answers_io import AnswerWriter

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("HOLOV_PRUNING", None)
ENV.pop("HOLOV_DIE_WITH_PARENT", None)


def _rec(qid, prompt="q"):
    return {"question_id": qid, "prompt": prompt, "text": "a", "model_id": "m", "metadata": {"pruning": None}}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _python(code: str, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=kwargs.pop("env", ENV),
                            cwd=REPO, stdout=subprocess.PIPE, text=True, **kwargs)


HOLDER = """
    import sys, time
    from llava.eval.answers_io import AnswerWriter
    w = AnswerWriter(sys.argv[1])
    w.write({"question_id": 1, "prompt": "q", "text": "a"})
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    w.close()
"""


# ---------------------------------------------------------------- item 7: one run per file
def test_second_writer_refuses_at_once_naming_the_holders_pid(tmp_path):
    path = tmp_path / "answers.jsonl"
    holder = _python(HOLDER, path, 60)
    try:
        assert holder.stdout.readline().strip() == "ready"
        start = time.time()
        with pytest.raises(ValueError) as err:
            AnswerWriter(str(path))
        assert time.time() - start < 3
        assert f"PID {holder.pid}" in str(err.value) and str(path) in str(err.value)
        assert "--wait-for-lock" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait()
    with AnswerWriter(str(path)) as w:
        assert w.done("1") and w.n_existing == 1
        w.write(_rec(2))
    assert [json.loads(x)["question_id"] for x in path.read_text().splitlines()] == [1, 2]
    assert not (tmp_path / "answers.jsonl.lock").exists()  # removed on close


def test_wait_for_lock_waits_for_the_holder_and_keeps_its_answers(tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    holder = _python(HOLDER, path, 1.5)
    try:
        assert holder.stdout.readline().strip() == "ready"
        start = time.time()
        with AnswerWriter(str(path), wait=True) as w:
            assert time.time() - start > 0.5  # it waited for the holder
            assert w.done("1")
            w.write(_rec(2))
        assert holder.wait(timeout=10) == 0
    finally:
        holder.kill()
    assert f"being written by PID {holder.pid}; waiting" in capsys.readouterr().err
    assert len(path.read_text().splitlines()) == 2


def test_one_process_cannot_open_two_writers_on_one_file(tmp_path):
    path = str(tmp_path / "a.jsonl")
    with AnswerWriter(path):
        with pytest.raises(ValueError, match="already open for writing in this process"):
            AnswerWriter(path)
    AnswerWriter(path).close()  # free again


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked from the run: when the run is killed, a worker that
    lingers must not keep the answers file locked."""
    path = tmp_path / "a.jsonl"
    parent = _python("""
        import os, sys, time
        from llava.eval.answers_io import AnswerWriter
        w = AnswerWriter(sys.argv[1])
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """, path)
    child = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _alive(child)
        with AnswerWriter(str(path)):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_entry_point_refuses_a_locked_answers_file_before_loading_the_model(tmp_path, eval_fixtures, monkeypatch,
                                                                            capsys):
    from llava.eval import eval_common, model_vqa_loader

    monkeypatch.setattr(eval_common.EvalModel, "load", classmethod(lambda cls, args: pytest.fail("model loaded")))
    answers = tmp_path / "gqa.jsonl"
    holder = _python(HOLDER, answers, 60)
    try:
        assert holder.stdout.readline().strip() == "ready"
        gqa = eval_fixtures / "gqa"
        rc = model_vqa_loader.main(["--model-path", "unused", "--question-file",
                                    str(gqa / "llava_gqa_testdev_balanced.jsonl"), "--image-folder",
                                    str(gqa / "data/images"), "--answers-file", str(answers), "--device", "cpu"])
    finally:
        holder.kill()
        holder.wait()
    assert rc == 2
    err = capsys.readouterr().err
    assert f"PID {holder.pid}" in err and err.count("\n") == 1


TIED = """
    import os, subprocess, sys, time
    env = dict(os.environ)
    if sys.argv[1] == "tie":
        env["HOLOV_DIE_WITH_PARENT"] = str(os.getpid())
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; from llava.utils import die_with_parent; "
                              "print(die_with_parent(), flush=True); time.sleep(60)"], env=env, stdout=sys.stdout)
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_worker_dies_when_its_parent_is_sigkilled():
    parent = _python(TIED, "tie")
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "True"  # the tie is made
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(child, 10), "the worker outlived its SIGKILLed parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_worker_started_by_hand_outlives_its_shell():
    """Without HOLOV_DIE_WITH_PARENT (a run under nohup, say) nothing is tied."""
    parent = _python(TIED, "no")
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "False"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        time.sleep(0.5)
        assert _alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_bad_parent_variable_is_an_error(monkeypatch):
    from llava.utils import die_with_parent

    monkeypatch.setenv("HOLOV_DIE_WITH_PARENT", "shell")
    with pytest.raises(ValueError, match="HOLOV_DIE_WITH_PARENT='shell' must be the PID"):
        die_with_parent()


def test_sigkilled_benchmark_script_takes_its_worker_along(tiny_llava_path, eval_fixtures, tmp_path):
    """`kill -9` of scripts/v1_5/eval/pope.sh (the shell alone, not its process group):
    its python worker exits too, and an immediate rerun completes the answers file with
    every question once."""
    env = {**ENV, "MODEL": tiny_llava_path, "DATA_ROOT": str(eval_fixtures), "RESULTS_ROOT": str(tmp_path),
           "DEVICE": "cpu", "TOKENS": "64", "METHOD": "cls_topk", "MAX_NEW_TOKENS": "8", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    answers_dir = tmp_path / "llava-v1.5-tiny/cls_topk_k64/pope/answers/llava_pope_test"
    chunk, lock = answers_dir / "1_0.jsonl", answers_dir / "1_0.jsonl.lock"
    script = REPO / "scripts/v1_5/eval/pope.sh"
    shell = subprocess.Popen(["bash", str(script)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and shell.poll() is None:
            if chunk.exists() and chunk.read_bytes().count(b"\n") >= 1 and lock.exists():
                worker = int(lock.read_text().strip())
                break
            time.sleep(0.02)
        assert worker is not None, "the benchmark never started answering"
        shell.send_signal(signal.SIGKILL)  # the shell only: no trap runs
        shell.wait()
        assert _wait_gone(worker, 15), "the python worker outlived its SIGKILLed script"
    finally:
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)
        os.killpg(shell.pid, signal.SIGKILL) if _alive(shell.pid) else None
    n_questions = sum(1 for line in (eval_fixtures / "pope/llava_pope_test.jsonl").read_text().splitlines() if line.strip())
    assert chunk.read_bytes().count(b"\n") < n_questions
    rerun = subprocess.run(["bash", str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = [json.loads(x) for x in (answers_dir / "merge.jsonl").read_text().splitlines()]
    assert len(records) == n_questions == len({(r["question_id"], r["prompt"]) for r in records})


# ---------------------------------------------------------------- item 8: weight fingerprint
def _retrain(folder: Path) -> None:
    """Other weights under the same name, as a second training into the same folder writes."""
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + torch.randn_like(weights[name])
    time.sleep(0.01)
    save_file(weights, str(path), metadata={"format": "pt"})


def test_resume_with_other_weights_in_the_same_folder_is_refused(tiny_llava_path, eval_fixtures, tmp_path, capsys):
    from llava.eval import model_vqa_loader
    from llava.eval.answers_io import model_fingerprint

    model = tmp_path / "llava-v1.5-tiny"  # same folder name as the original: model_id matches
    shutil.copytree(tiny_llava_path, model)
    gqa = eval_fixtures / "gqa"
    answers = tmp_path / "answers.jsonl"
    args = ["--model-path", str(model), "--question-file", str(gqa / "llava_gqa_testdev_balanced.jsonl"),
            "--image-folder", str(gqa / "data/images"), "--answers-file", str(answers), "--temperature", "0",
            "--conv-mode", "vicuna_v1", "--max_new_tokens", "2", "--device", "cpu"]
    assert model_vqa_loader.main(args + ["--max-questions", "2"]) == 0
    first = model_fingerprint(str(model))
    records = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(records) == 2 and all(r["metadata"]["model_fingerprint"] == first for r in records)
    assert all(r["model_id"] == "llava-v1.5-tiny" for r in records)
    _retrain(model)
    second = model_fingerprint(str(model))
    assert second != first
    capsys.readouterr()
    assert model_vqa_loader.main(args) == 2
    err = capsys.readouterr().err
    assert first in err and second in err and "metadata.model_fingerprint" in err
    assert len(answers.read_text().splitlines()) == 2  # nothing appended


def test_fingerprint_follows_config_and_weight_files_not_other_files(tmp_path):
    from llava.eval.answers_io import model_fingerprint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x" * 10)
    (folder / "model.safetensors.index.json").write_text("{}")
    base = model_fingerprint(str(folder))
    assert model_fingerprint(str(folder)) == base
    (folder / "README.md").write_text("notes")
    assert model_fingerprint(str(folder)) == base
    (folder / "config.json").write_text('{"a": 2}')
    changed_config = model_fingerprint(str(folder))
    assert changed_config != base
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"y")
    assert model_fingerprint(str(folder)) != changed_config
    other = tmp_path / "base"
    shutil.copytree(folder, other)
    assert model_fingerprint(str(folder), str(other)) != model_fingerprint(str(folder))
    with pytest.raises(ValueError, match="neither a folder nor a hub id in the local cache"):
        model_fingerprint(str(tmp_path / "nope" / "x"))


def test_records_without_a_fingerprint_are_not_resumed_silently(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(_rec(1)) + "\n")  # written before fingerprints existed
    w = AnswerWriter(str(path))
    with pytest.raises(ValueError, match=r'metadata.model_fingerprint=<missing>.*metadata.model_fingerprint="abc"'):
        w.expect({"metadata.model_fingerprint": "abc"})
    w.close()


def test_writer_stamps_the_settings_a_record_lacks(tmp_path):
    path = tmp_path / "a.jsonl"
    record = _rec(1)
    with AnswerWriter(str(path), settings={"model_id": "m", "metadata.model_fingerprint": "f00"}) as w:
        w.write(record)
    assert "model_fingerprint" not in record["metadata"]  # the caller's dict is left alone
    (line,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert line["metadata"] == {"pruning": None, "model_fingerprint": "f00"}


# ---------------------------------------------------------------- item 16: bad input
@pytest.fixture()
def no_model(monkeypatch):
    from llava.eval import eval_common

    monkeypatch.setattr(eval_common.EvalModel, "load", classmethod(lambda cls, args: pytest.fail("model loaded")))


def _main(entry: str, args) -> int:
    import importlib

    return importlib.import_module(f"llava.eval.{entry}").main([str(a) for a in args])


def _common(question_file, image_folder, answers):
    return ["--model-path", "unused", "--question-file", question_file, "--image-folder", image_folder,
            "--answers-file", answers, "--device", "cpu"]


@pytest.mark.parametrize("entry", ["model_vqa_loader", "model_vqa"])
def test_non_utf8_question_file_is_named(entry, tmp_path, no_model, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(json.dumps({"question_id": 1, "image": "a.png", "text": "hi"}).encode() + b"\n"
                          + b'{"question_id": 2, "image": "a.png", "text": "caf\xe9"}\n')
    assert _main(entry, _common(questions, tmp_path, tmp_path / "a.jsonl")) == 2
    err = capsys.readouterr().err
    assert str(questions) in err and "not UTF-8" in err and "0xe9" in err and "line 2" in err


@pytest.mark.parametrize("entry", ["model_vqa_loader", "model_vqa"])
def test_null_image_is_an_error(entry, tmp_path, no_model, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "image": None, "text": "hi"}) + "\n")
    assert _main(entry, _common(questions, tmp_path, tmp_path / "a.jsonl")) == 2
    err = capsys.readouterr().err
    assert "question 7 has image=null" in err and str(questions) in err


def test_missing_image_file_is_an_error_before_loading(tmp_path, no_model, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "image": "gone.png", "text": "hi"}) + "\n")
    assert _main("model_vqa_loader", _common(questions, tmp_path, tmp_path / "a.jsonl")) == 2
    assert "1 image(s) not found" in capsys.readouterr().err


@pytest.mark.parametrize("entry", ["model_vqa_loader", "model_vqa", "model_vqa_science", "model_vqa_mmbench"])
def test_directory_as_answers_file_is_an_error(entry, tmp_path, no_model, capsys, eval_fixtures):
    questions = {"model_vqa_science": eval_fixtures / "scienceqa/llava_test_CQM-A.json",
                 "model_vqa_mmbench": eval_fixtures / "mmbench/mmbench_dev_20230712.tsv"}.get(
        entry, eval_fixtures / "gqa/llava_gqa_testdev_balanced.jsonl")
    folder = tmp_path / "answers_dir"
    folder.mkdir()
    assert _main(entry, _common(questions, tmp_path, folder)) == 2
    err = capsys.readouterr().err
    assert f"--answers-file {folder} is a directory" in err


def test_science_and_mmbench_non_utf8_files_are_named(tmp_path, no_model, capsys):
    sqa = tmp_path / "sqa.json"
    sqa.write_bytes(b'[{"id": "1", "conversations": [{"from": "human", "value": "\xff"}]}]')
    assert _main("model_vqa_science", _common(sqa, tmp_path, tmp_path / "a.jsonl")) == 2
    assert f"question file {sqa} is not UTF-8" in capsys.readouterr().err
    tsv = tmp_path / "mmb.tsv"
    tsv.write_bytes(b"index\tquestion\timage\tA\tB\n1\tQ\xff\timg\ta\tb\n")
    assert _main("model_vqa_mmbench", _common(tsv, tmp_path, tmp_path / "b.jsonl")) == 2
    assert f"question file {tsv} is not UTF-8" in capsys.readouterr().err


def test_question_file_and_image_folder_must_exist(tmp_path, no_model, capsys):
    assert _main("model_vqa_loader", _common(tmp_path / "none.jsonl", tmp_path, tmp_path / "a.jsonl")) == 2
    assert "--question-file" in capsys.readouterr().err
    questions = tmp_path / "q.jsonl"
    questions.write_text("")
    assert _main("model_vqa_loader", _common(questions, tmp_path / "no_images", tmp_path / "a.jsonl")) == 2
    assert "--image-folder" in capsys.readouterr().err


def test_eval_check_args_rejects_nan_temperature():
    import argparse

    from llava.eval.eval_common import check_args

    args = argparse.Namespace(num_chunks=1, chunk_idx=0, temperature=float("nan"), top_p=None, num_beams=1,
                              max_new_tokens=1, max_questions=None, answers_file="a.jsonl", question_file="q")
    with pytest.raises(ValueError, match="--temperature nan must be a finite number >= 0"):
        check_args(args)
