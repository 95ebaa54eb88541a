"""The benchmark entry points (llava/eval/model_vqa*.py) on the tiny checkpoint and the
synthetic benchmark fixtures: LLaVA's prompts and answer records, chunking, and resuming
an interrupted run (hidden --max-questions cut, a SIGKILL, a half-written last line)
into the very file an uninterrupted run writes."""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava.eval import answers_io
from llava.eval.eval_common import get_chunk, split_list

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # whole scripts / models end to end

REPO = Path(__file__).resolve().parents[1]
PRUNE = ["--prune-method", "cls_topk", "--holov-tokens", "64"]


@pytest.fixture(scope="module")
def fixtures(eval_fixtures) -> Path:
    return eval_fixtures


def run(entry: str, args) -> None:
    module = importlib.import_module(f"llava.eval.{entry}")
    assert module.main([str(a) for a in args]) == 0


def read_lines(path) -> list:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def loader_args(model, fixtures, answers, *extra):
    gqa = fixtures / "gqa"
    return ["--model-path", model, "--question-file", gqa / "llava_gqa_testdev_balanced.jsonl",
            "--image-folder", gqa / "data/images", "--answers-file", answers, "--temperature", "0",
            "--conv-mode", "vicuna_v1", "--max_new_tokens", "3", "--device", "cpu", *extra]


# ---------------------------------------------------------------- chunking
@pytest.mark.parametrize("n_items,n_chunks", [(10, 3), (5, 5), (3, 4), (0, 2), (7, 1)])
def test_chunks_cover_the_list_in_order(n_items, n_chunks):
    items = list(range(n_items))
    chunks = [list(get_chunk(items, n_chunks, k)) for k in range(n_chunks)]
    assert sum(chunks, []) == items
    size = -(-n_items // n_chunks) if n_items else 0  # ceil, as LLaVA's split_list
    assert all(len(c) <= size for c in chunks)
    assert [len(c) for c in split_list(items, n_chunks)] == [len(c) for c in chunks if c]


@pytest.mark.parametrize("n,k", [(0, 0), (2, 2), (2, -1)])
def test_bad_chunk_raises(n, k):
    with pytest.raises(ValueError, match="num_chunks|chunk_idx"):
        get_chunk([1, 2, 3], n, k)


# ---------------------------------------------------------------- the resumable writer
def _rec(qid, prompt="q", text="a", pruning=None):
    return {"question_id": qid, "prompt": prompt, "text": text, "model_id": "m", "metadata": {"pruning": pruning}}


def test_writer_resumes_and_skips(tmp_path):
    path = tmp_path / "a.jsonl"
    settings = {"model_id": "m", "metadata.pruning": None}
    with answers_io.AnswerWriter(str(path), answers_io.question_prompt_key, settings) as w:
        w.write(_rec(1, "q1"))
        w.write(_rec(1, "q2"))  # same id, other question (MME, TextVQA)
        with pytest.raises(ValueError, match="already in"):
            w.write(_rec(1, "q1"))
    with answers_io.AnswerWriter(str(path), answers_io.question_prompt_key, settings) as w:
        assert w.n_existing == 2
        assert w.done(("1", "q1")) and w.done(("1", "q2")) and not w.done(("2", "q1"))
        w.write(_rec(2, "q1"))
    assert [r["question_id"] for r in read_lines(path)] == [1, 1, 2]


def test_writer_drops_a_partial_last_line(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    full = json.dumps(_rec(1)) + "\n"
    path.write_text(full + json.dumps(_rec(2))[:17], encoding="utf-8")
    with answers_io.AnswerWriter(str(path)) as w:
        assert w.done("1") and not w.done("2")
        w.write(_rec(2))
    assert path.read_text(encoding="utf-8") == full + json.dumps(_rec(2)) + "\n"
    assert "partial last line" in capsys.readouterr().err


def test_writer_rejects_a_bad_middle_line_and_other_settings(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1\n' + json.dumps(_rec(2)) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        answers_io.AnswerWriter(str(bad))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(_rec(1, pruning={"method": "random", "keep": 64})) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="metadata.pruning"):
        answers_io.AnswerWriter(str(other), settings={"metadata.pruning": {"method": "cls_topk", "keep": 64}})


# ---------------------------------------------------------------- model_vqa_loader / model_vqa
@pytest.fixture(scope="module")
def gqa_unpruned(tiny_llava_path, fixtures, tmp_path_factory) -> Path:
    """Answers of one uninterrupted loader run on the GQA fixture, pruning off."""
    answers = tmp_path_factory.mktemp("gqa") / "unpruned.jsonl"
    run("model_vqa_loader", loader_args(tiny_llava_path, fixtures, answers))
    return answers


@pytest.fixture(scope="module")
def gqa_pruned(tiny_llava_path, fixtures, tmp_path_factory) -> Path:
    answers = tmp_path_factory.mktemp("gqa") / "cls_topk_k64.jsonl"
    run("model_vqa_loader", loader_args(tiny_llava_path, fixtures, answers, *PRUNE))
    return answers


def test_loader_records_prompts_and_pruning(fixtures, gqa_pruned, gqa_unpruned):
    recs = read_lines(gqa_pruned)
    questions = read_lines(fixtures / "gqa/llava_gqa_testdev_balanced.jsonl")
    assert [r["question_id"] for r in recs] == [q["question_id"] for q in questions]
    # the prompt recorded is the question text, as LLaVA's (and the fixture's answers file)
    expected = {r["question_id"]: r["prompt"] for r in read_lines(fixtures / "gqa/answers/fixture-model.jsonl")}
    assert {r["question_id"]: r["prompt"] for r in recs} == expected
    for r in recs:
        assert set(r) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert r["model_id"] == "llava-v1.5-tiny"
        assert r["metadata"]["pruning"]["method"] == "cls_topk" and r["metadata"]["pruning"]["keep"] == 64
        assert r["metadata"]["generation"]["max_new_tokens"] == 3
    assert all(r["metadata"]["pruning"] is None for r in read_lines(gqa_unpruned))


def test_interrupted_loader_run_resumes_to_the_same_file(tiny_llava_path, fixtures, tmp_path, gqa_unpruned):
    reference, resumed = gqa_unpruned, tmp_path / "resumed.jsonl"
    run("model_vqa_loader", loader_args(tiny_llava_path, fixtures, resumed, "--max-questions", 2))
    assert len(read_lines(resumed)) == 2
    run("model_vqa_loader", loader_args(tiny_llava_path, fixtures, resumed))
    assert resumed.read_bytes() == reference.read_bytes()
    # a second complete rerun changes nothing; a rerun with other pruning is refused
    run("model_vqa_loader", loader_args(tiny_llava_path, fixtures, resumed))
    assert resumed.read_bytes() == reference.read_bytes()
    from llava.eval import model_vqa_loader

    assert model_vqa_loader.main([str(a) for a in loader_args(tiny_llava_path, fixtures, resumed, *PRUNE)]) == 2


def test_model_vqa_matches_the_loader(tiny_llava_path, fixtures, tmp_path, gqa_pruned):
    """The sequential entry point and the DataLoader one give the same answers."""
    answers = tmp_path / "vqa.jsonl"
    run("model_vqa", loader_args(tiny_llava_path, fixtures, answers, *PRUNE))
    assert answers.read_bytes() == gqa_pruned.read_bytes()


def test_chunks_merge_to_the_single_run(tiny_llava_path, fixtures, tmp_path, gqa_unpruned):
    single = gqa_unpruned
    merged = b""
    for k in range(2):
        part = tmp_path / f"2_{k}.jsonl"
        run("model_vqa_loader", loader_args(tiny_llava_path, fixtures, part, "--num-chunks", 2, "--chunk-idx", k))
        merged += part.read_bytes()
    assert merged == single.read_bytes()


def test_killed_run_resumes_without_loss_or_duplicates(tiny_llava_path, fixtures, tmp_path):
    pope = fixtures / "pope"
    args = ["--model-path", tiny_llava_path, "--question-file", pope / "llava_pope_test.jsonl",
            "--image-folder", pope / "val2014", "--temperature", "0", "--conv-mode", "vicuna_v1",
            "--max_new_tokens", "8", "--device", "cpu"]
    n_questions = len(read_lines(pope / "llava_pope_test.jsonl"))
    reference, killed = tmp_path / "ref.jsonl", tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "llava.eval.model_vqa_loader", *map(str, args),
                             "--answers-file", str(killed)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if killed.exists() and killed.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    n_at_kill = killed.read_bytes().count(b"\n")
    assert 1 <= n_at_kill < n_questions, f"the kill came at {n_at_kill} of {n_questions} answers"
    run("model_vqa_loader", [*args, "--answers-file", killed])
    run("model_vqa_loader", [*args, "--answers-file", reference])
    assert killed.read_bytes() == reference.read_bytes()
    assert len({(r["question_id"], r["prompt"]) for r in read_lines(killed)}) == n_questions


# ---------------------------------------------------------------- ScienceQA
def test_science_prompts_and_text_only_questions(tiny_llava_path, fixtures, tmp_path):
    sqa = fixtures / "scienceqa"
    answers = tmp_path / "sqa.jsonl"
    args = ["--model-path", tiny_llava_path, "--question-file", sqa / "llava_test_CQM-A.json",
            "--image-folder", sqa / "images/test", "--answers-file", answers, "--single-pred-prompt",
            "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "2", "--device", "cpu"]
    run("model_vqa_science", args + ["--max-questions", 1])
    run("model_vqa_science", args)
    recs = read_lines(answers)
    problems = json.loads((sqa / "llava_test_CQM-A.json").read_text(encoding="utf-8"))
    assert [r["question_id"] for r in recs] == [p["id"] for p in problems]
    assert any("image" not in p for p in problems), "the fixture should hold a text-only problem"
    expected = {r["question_id"]: r["prompt"] for r in read_lines(sqa / "answers/fixture-model.jsonl")}
    assert {r["question_id"]: r["prompt"] for r in recs} == expected
    for r, p in zip(recs, problems):
        assert r["prompt"].startswith("<image>\n") == ("image" in p)
        assert r["prompt"].endswith("Answer with the option's letter from the given choices directly.")


# ---------------------------------------------------------------- MMBench
def test_mmbench_rounds_rotate_the_options(tiny_llava_path, fixtures, tmp_path):
    from llava.eval.model_vqa_mmbench import get_options, load_rows
    from llava.eval.scoring import mmbench as mmbench_scoring

    tsv = fixtures / "mmbench/mmbench_dev_20230712.tsv"
    answers = tmp_path / "mmb.jsonl"
    args = ["--model-path", tiny_llava_path, "--question-file", tsv, "--answers-file", answers,
            "--single-pred-prompt", "--all-rounds", "--temperature", "0", "--conv-mode", "vicuna_v1",
            "--max_new_tokens", "2", "--device", "cpu"]
    run("model_vqa_mmbench", args + ["--max-questions", 3])
    run("model_vqa_mmbench", args)
    recs = read_lines(answers)
    rows = {r["index"]: r for r in load_rows(str(tsv))}
    assert len(recs) == sum(len(get_options(r)) for r in rows.values())
    assert len({(r["question_id"], r["round_id"]) for r in recs}) == len(recs)
    for rec in recs:
        options = get_options(rows[rec["question_id"]])
        k = rec["round_id"]
        assert rec["options"] == options[k:] + options[:k]
        assert rec["option_char"] == list("ABCD"[:len(options)][k:] + "ABCD"[:len(options)][:k])
        assert rec["prompt"].endswith("\n".join(f"{c}. {o}" for c, o in zip("ABCD", rec["options"])))
    # the scorer accepts every round as a circular pass
    result = mmbench_scoring.score(recs, mmbench_scoring.load_rows(str(tsv)))
    assert result["metrics"]["n_answers"] == len(recs)


def test_mmbench_cn_single_round_matches_llava_prompts(tiny_llava_path, fixtures, tmp_path):
    from llava.eval.model_vqa_mmbench import instruction

    tsv = fixtures / "mmbench/mmbench_dev_cn_20231003.tsv"
    answers = tmp_path / "mmb_cn.jsonl"
    run("model_vqa_mmbench", ["--model-path", tiny_llava_path, "--question-file", tsv, "--answers-file", answers,
                              "--single-pred-prompt", "--lang", "cn", "--temperature", "0", "--conv-mode",
                              "vicuna_v1", "--max_new_tokens", "2", "--device", "cpu"])
    recs = read_lines(answers)
    expected = read_lines(fixtures / "mmbench/answers/mmbench_dev_cn_20231003/fixture-model.jsonl")
    assert [(r["question_id"], r["round_id"], r["prompt"], r["options"]) for r in recs] == \
        [(e["question_id"], e["round_id"], e["prompt"], e["options"]) for e in expected]
    assert instruction("cn", True) == "\n请直接回答选项字母。"
    assert instruction("en", True).endswith("from the given choices directly.") and instruction("en", False) == ""
    with pytest.raises(ValueError, match="lang"):
        instruction("fr", True)
