"""End to end: scripts/holov/sweep.sh runs all ten benchmark scripts at K = 576 and 64 on
the tiny checkpoint and the synthetic fixtures, scores them and writes the table; a
benchmark script killed mid-run and rerun gives the same answers file. Also the scripts'
input checks (no Python needed for those)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from llava.eval.tables import BENCHMARKS

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # whole scripts / models end to end

REPO = Path(__file__).resolve().parents[1]
EVAL_SCRIPTS = REPO / "scripts/v1_5/eval"
ALL = [folder for folder, _, _ in BENCHMARKS]
# folder of each benchmark's answers: the split name its script passes to holov_eval_init
SPLITS = {"gqa": "llava_gqa_testdev_balanced", "mmbench": "mmbench_dev_20230712",
          "mmbench_cn": "mmbench_dev_cn_20231003", "mme": "llava_mme", "pope": "llava_pope_test",
          "sqa": "llava_test_CQM-A", "vqav2": "llava_vqav2_mscoco_test-dev2015",
          "textvqa": "llava_textvqa_val_v051_ocr", "vizwiz": "llava_val", "seed": "llava-seed-bench"}


@pytest.fixture(scope="module")
def fixtures(eval_fixtures) -> Path:
    return eval_fixtures


def sweep_env(model: str, fixtures: Path, results: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HOLOV_PRUNING", "CUDA_VISIBLE_DEVICES")}
    env.update(MODEL=model, DATA_ROOT=str(fixtures), RESULTS_ROOT=str(results), DEVICE="cpu",
               METHODS="cls_topk", KEEPS="576 64", MAX_NEW_TOKENS="2", VIZWIZ_SPLIT="val", JOBS="2",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def swept(tiny_llava_path, fixtures, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    env = sweep_env(tiny_llava_path, fixtures, results)
    proc = subprocess.run(["bash", "scripts/holov/sweep.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results / "llava-v1.5-tiny", proc.stdout


def n_questions(fixtures: Path, bench: str) -> int:
    """Answers each benchmark should get (one per question; MMBench: one per TSV row)."""
    lines = lambda p: sum(1 for line in p.read_text(encoding="utf-8").splitlines() if line.strip())  # noqa: E731
    files = {"gqa": "gqa/llava_gqa_testdev_balanced.jsonl", "mme": "MME/llava_mme.jsonl",
             "pope": "pope/llava_pope_test.jsonl", "vqav2": "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",
             "textvqa": "textvqa/llava_textvqa_val_v051_ocr.jsonl", "vizwiz": "vizwiz/llava_val.jsonl",
             "seed": "seed_bench/llava-seed-bench.jsonl"}
    if bench in files:
        return lines(fixtures / files[bench])
    if bench == "sqa":
        return len(json.loads((fixtures / "scienceqa/llava_test_CQM-A.json").read_text(encoding="utf-8")))
    tsv = "mmbench_dev_20230712.tsv" if bench == "mmbench" else "mmbench_dev_cn_20231003.tsv"
    return lines(fixtures / "mmbench" / tsv) - 1  # header


def test_sweep_writes_every_result_and_the_table(swept, fixtures):
    run_set, stdout = swept
    for run, pruning in (("unpruned_k576", None), ("cls_topk_k64", ("cls_topk", 64))):
        for bench in ALL:
            result = json.loads((run_set / run / bench / "result.json").read_text())
            assert set(result) == {"benchmark", "headline", "metrics", "n"}
            answers = [json.loads(x) for x in
                       (run_set / run / bench / "answers" / SPLITS[bench] / "merge.jsonl").read_text().splitlines()]
            assert len(answers) == n_questions(fixtures, bench), (run, bench)
            for a in answers:
                got = a["metadata"]["pruning"]
                assert (got if got is None else (got["method"], got["keep"])) == pruning, (run, bench)
    with open(run_set / "table.csv", newline="") as f:
        rows = {(r["method"], r["K"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("unpruned", "576"), ("cls_topk", "64")}
    for (method, k), row in rows.items():
        for _, header, _ in BENCHMARKS:
            folder = next(f for f, h, _ in BENCHMARKS if h == header)
            result = json.loads((run_set / f"{method}_k{k}" / folder / "result.json").read_text())
            assert float(row[header]) == pytest.approx(result["headline"], abs=1e-4)
    md = (run_set / "table.md").read_text(encoding="utf-8")
    assert "| Method | K | GQA | MMB | MMB-CN | MME | POPE | SQA | VQAv2 | TextVQA | VizWiz | SEED |" in md
    assert md in stdout
    assert (run_set / "table.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_set / "cls_topk_k64/vqav2/answers_upload/llava_vqav2_mscoco_test-dev2015.json").is_file()


def test_killed_benchmark_script_resumes_to_the_same_answers(swept, tiny_llava_path, fixtures, tmp_path):
    run_set, _ = swept
    reference = run_set / "cls_topk_k64/pope/answers/llava_pope_test/merge.jsonl"
    env = sweep_env(tiny_llava_path, fixtures, tmp_path, TOKENS="64", METHOD="cls_topk", MAX_NEW_TOKENS="2")
    chunk = tmp_path / "llava-v1.5-tiny/cls_topk_k64/pope/answers/llava_pope_test/1_0.jsonl"
    proc = subprocess.Popen(["bash", str(EVAL_SCRIPTS / "pope.sh")], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if chunk.exists() and chunk.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and the eval it started (our own process group)
        proc.wait()
    n_at_kill = chunk.read_bytes().count(b"\n")
    assert 1 <= n_at_kill < n_questions(fixtures, "pope")
    rerun = subprocess.run(["bash", str(EVAL_SCRIPTS / "pope.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    merged = tmp_path / "llava-v1.5-tiny/cls_topk_k64/pope/answers/llava_pope_test/merge.jsonl"
    assert merged.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("env,message", [
    ({"MODEL": ""}, "set MODEL="),
    ({"TOKENS": "sixty"}, "TOKENS=sixty must be a positive integer"),
    ({"TOKENS": "700"}, "must be below FULL_TOKENS=576"),
    ({"TOKENS": "64", "METHOD": "cls_topk", "MODE": "improved"}, "MODE=improved only applies to METHOD=holov"),
    ({"DEVICE": "tpu"}, "DEVICE=tpu must be cuda or cpu"),
    ({"DATA_ROOT": "/nonexistent/data"}, "is not a directory"),
])
def test_script_input_checks(env, message, fixtures, tmp_path):
    full = {**os.environ, "MODEL": "some/model", "DATA_ROOT": str(fixtures), "RESULTS_ROOT": str(tmp_path),
            "DEVICE": "cpu", **env}
    proc = subprocess.run(["bash", str(EVAL_SCRIPTS / "pope.sh")], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_missing_data_names_the_file(fixtures, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    proc = subprocess.run(["bash", str(EVAL_SCRIPTS / "gqa.sh")], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "MODEL": "m", "DATA_ROOT": str(empty), "RESULTS_ROOT": str(tmp_path),
                               "DEVICE": "cpu"})
    assert proc.returncode == 2
    assert "llava_gqa_testdev_balanced.jsonl not found" in proc.stderr and "README.md" in proc.stderr


def test_sweep_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run(["bash", "scripts/holov/sweep.sh"], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "MODEL": "m", "BENCHES": "pope mmmu", "RESULTS_ROOT": str(tmp_path)})
    assert proc.returncode == 2 and "no script" in proc.stderr and "mmmu" in proc.stderr


def test_scripts_parse():
    for script in [*EVAL_SCRIPTS.glob("*.sh"), REPO / "scripts/holov/sweep.sh"]:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
    assert {p.stem for p in EVAL_SCRIPTS.glob("*.sh")} == {*ALL, "_common"}
