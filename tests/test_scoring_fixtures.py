"""Every scorer CLI, run once on the synthetic fixtures (playground/fixtures/eval).

The expected headlines are derived by hand from the hand-made answers that
``playground/fixtures/make_fixtures.py`` writes; the derivation sits beside each case.
"""

import filecmp
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "playground", "fixtures", "eval")
ANS = "answers/fixture-model.jsonl"

CASES = {
    # q1000 "Red." vs 10x red -> 1; q2000 "two" -> "2", 2 of 10 humans -> 0.6;
    # q3000 "Triangle" vs triangle x2 + "the triangle" -> 3 matches -> 0.9; q4000 "Yes" vs no -> 0.
    # (1 + 0.6 + 0.9 + 0) / 4 = 62.5
    "vqav2": (["--answers-file", f"vqav2/{ANS}",
               "--annotation-file", "vqav2/v2_mscoco_val2014_annotations.json",
               "--question-file", "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",
               "--submission-file", "{out}/vqav2_submission.json"], 62.5),
    # "Yes." right, "Blue" right, "The square" != "square", "yes" right, "Yes" != "no": 3/5
    "gqa": (["--answers-file", f"gqa/{ANS}",
             "--annotation-file", "gqa/data/testdev_balanced_questions.json",
             "--submission-file", "{out}/testdev_balanced_predictions.json"], 60.0),
    # STOP 1; "42" 1 of 10 -> 0.3; "9:30." -> "9:30" 1; "closed" 0: 2.3 / 4
    "textvqa": (["--answers-file", f"textvqa/{ANS}",
                 "--annotation-file", "textvqa/TextVQA_0.5.1_val.json"], 57.5),
    # adversarial all right: F1 1; popular all "Yes": P 1/2 R 1 F1 2/3;
    # random TP 1 FN 1 TN 2: P 1 R 1/2 F1 2/3. Mean (1 + 2/3 + 2/3) / 3 = 7/9
    "pope": (["--answers-file", f"pope/{ANS}", "--question-file", "pope/llava_pope_test.jsonl",
              "--annotation-dir", "pope/coco"], 700 / 9),
    # existence acc 3/4, acc+ 1/2 -> 125; artwork acc 1/2 ("I am not sure" is other), acc+ 0
    # -> 50; code_reasoning 200. Perception 175 + cognition 200
    "mme": (["--answers-file", f"MME/{ANS}",
             "--data-dir", "MME/MME_Benchmark_release_version"], 375.0),
    # image problems 1 (A right), 2 ("The answer is C." right), 3 (A, wrong): IMG 2/3
    "scienceqa": (["--answers-file", f"scienceqa/{ANS}", "--base-dir", "scienceqa"], 200 / 3),
    # question 0 right in all 4 rotations; question 1 answers "A" on the copy whose answer is B
    "mmbench": (["--answers-file", "mmbench/answers/mmbench_dev_20230712/fixture-model.jsonl",
                 "--question-file", "mmbench/mmbench_dev_20230712.tsv",
                 "--submission-file", "{out}/mmbench.tsv"], 50.0),
    # every pass right (one by the option text "圆形")
    "mmbench_cn": (["--answers-file",
                    "mmbench/answers/mmbench_dev_cn_20231003/fixture-model.jsonl",
                    "--question-file", "mmbench/mmbench_dev_cn_20231003.tsv"], 100.0),
    # LLaVA's exact-letter rule over image and video questions (int ids, as LLaVA's file):
    # B right, "C." wrong, B wrong (A), "white" wrong, video A right: Total 2/5
    "seed": (["--answers-file", f"seed_bench/{ANS}",
              "--annotation-file", "seed_bench/SEED-Bench.json",
              "--submission-file", "{out}/seed_upload.jsonl"], 40.0),
    # val: "Red" 1, "Unanswerable" 1, "two" -> "2" with 2 of 10 -> 0.6: 2.6 / 3
    "vizwiz": (["--answers-file", "vizwiz/answers/fixture-model_val.jsonl",
                "--question-file", "vizwiz/llava_val.jsonl",
                "--annotation-file", "vizwiz/val.json"], 260 / 3),
}
MODULE = {"mmbench_cn": "mmbench"}


def _run(module, args, out_dir):
    resolved = [a.format(out=out_dir) if "{out}" in a else
                (os.path.join(FIX, a) if a.split("/")[0] in os.listdir(FIX) else a) for a in args]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", f"llava.eval.scoring.{module}", *resolved],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_on_fixture(name, tmp_path):
    args, expected = CASES[name]
    result_file = tmp_path / "result.json"
    proc = _run(MODULE.get(name, name), [*args, "--result-file", str(result_file)], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(result_file.read_text())
    assert set(result) == {"benchmark", "headline", "metrics", "n"}
    assert result["benchmark"] == name
    assert result["headline"] == pytest.approx(expected)
    assert f"headline {expected:.2f}" in proc.stdout


# --parser lenient: the official headline stays on top, the lenient one beside it.
LENIENT = {
    # lenient letters: "C." -> C right, "white" = option A right: 4/5
    "seed": 80.0,
    # the same reading of these answers as the official one (no "The answer is Clock."-type
    # or "(B)"-type answers in the fixture): IMG 2/3
    "scienceqa": 200 / 3,
    # no trailing whitespace in the fixture answers: 3/5 either way
    "gqa": 60.0,
    # no repeated (image, question) pair in the fixture: 57.5 either way
    "textvqa": 57.5,
    # m4c rule on the fixture: the same per-question values as the official rule: 62.5
    "vqav2": 62.5,
}


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_cli_lenient_parser_on_fixture(name, tmp_path):
    args, official = CASES[name]
    result_file = tmp_path / "result.json"
    proc = _run(name, [*args, "--result-file", str(result_file), "--parser", "lenient"],
                str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(result_file.read_text())
    assert set(result) == {"benchmark", "headline", "metrics", "n", "parser", "lenient"}
    assert result["parser"] == "lenient"
    assert result["headline"] == pytest.approx(official)
    assert result["lenient"]["headline"] == pytest.approx(LENIENT[name])


def test_submission_files_on_fixture(tmp_path):
    # VQAv2 for EvalAI: every test2015 question, test-dev answers normalised, the rest "".
    proc = _run("vqav2", ["--answers-file", f"vqav2/{ANS}",
                          "--question-file", "vqav2/llava_vqav2_mscoco_test2015.jsonl",
                          "--submission-file", "{out}/v.json"], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "v.json").read_text()) == [
        {"question_id": 1000, "answer": "red"}, {"question_id": 2000, "answer": "2"},
        {"question_id": 3000, "answer": "triangle"}, {"question_id": 4000, "answer": "yes"},
        {"question_id": 4001, "answer": ""}]
    # VizWiz test: [{image, answer}]
    proc = _run("vizwiz", ["--answers-file", f"vizwiz/{ANS}",
                           "--question-file", "vizwiz/llava_test.jsonl",
                           "--submission-file", "{out}/z.json"], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert [r["answer"] for r in json.loads((tmp_path / "z.json").read_text())] == \
        ["blue", "unanswerable", "3"]
    # MMBench upload table: one prediction per TSV row (no openpyxl here -> .tsv)
    proc = _run("mmbench", ["--answers-file",
                            "mmbench/answers/mmbench_dev_20230712/fixture-model.jsonl",
                            "--question-file", "mmbench/mmbench_dev_20230712.tsv",
                            "--submission-file", "{out}/m.tsv", "--no-score"], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "m.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert "prediction" in header and "image" not in header
    assert [ln.split("\t")[header.index("prediction")] for ln in lines[1:]] == \
        ["A", "D", "C", "B", "A", "A"]


def test_fixtures_are_current_and_small(tmp_path):
    """Regenerating gives the committed text files byte for byte and the same images."""
    sys.path.insert(0, os.path.join(REPO, "playground", "fixtures"))
    try:
        import make_fixtures
    finally:
        sys.path.pop(0)
    make_fixtures.main(["--out", str(tmp_path)])
    total = 0
    for bench in make_fixtures.BENCHMARK_DIRS:
        committed, fresh = os.path.join(FIX, bench), str(tmp_path / bench)
        files = sorted(os.path.relpath(os.path.join(dp, f), fresh)
                       for dp, _, fs in os.walk(fresh) for f in fs)
        assert files, bench
        for rel in files:
            a, b = os.path.join(committed, rel), os.path.join(fresh, rel)
            assert os.path.exists(a), f"{bench}/{rel} is not committed: rerun make_fixtures.py"
            total += os.path.getsize(a)
            if rel.endswith((".jpg", ".png")):
                with Image.open(a) as im:  # encoders may differ across Pillow versions
                    assert im.size == (64, 64)
            else:
                assert filecmp.cmp(a, b, shallow=False), f"{bench}/{rel} differs from a fresh run"
    assert total < 1_000_000
