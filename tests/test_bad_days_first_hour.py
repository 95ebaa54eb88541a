"""A new user's first hour: scripts work in a new shell (no activated virtualenv), and the
report tools never overwrite the shipped docs by default."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the virtualenv running the tests
BARE_PATH = "/usr/bin:/bin"  # a new shell: no activated virtualenv, no torch on PATH


def _bare_env(**extra):
    env = {"PATH": BARE_PATH, "HOME": os.environ.get("HOME", "/root"), "HF_HUB_OFFLINE": "1"}
    env.update(extra)
    return env


@pytest.mark.subprocess
def test_an_eval_script_finds_the_project_venv_in_a_new_shell(tmp_path):
    # TOKENS is checked by Python (holov_patches.cli_args): the message proves the script ran the
    # project's interpreter although nothing was activated.
    done = subprocess.run(["bash", "scripts/v1_5/eval/pope.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=_bare_env(HOLOV_VENV=str(VENV), MODEL="x", DATA_ROOT=str(tmp_path), TOKENS="sixty"))
    assert done.returncode != 0
    assert "TOKENS=sixty must be a positive integer" in done.stderr, done.stderr
    assert "command not found" not in done.stderr and "No module named" not in done.stderr


@pytest.mark.subprocess
def test_without_any_venv_the_script_says_what_to_run(tmp_path):
    done = subprocess.run(["bash", "scripts/v1_5/eval/pope.sh"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=_bare_env(HOLOV_VENV=str(tmp_path / "no-venv"), MODEL="x", DATA_ROOT=str(tmp_path)))
    assert done.returncode == 1
    assert "no project virtualenv at" in done.stderr and "bash scripts/test.sh" in done.stderr


def test_report_tools_write_under_results_by_default():
    from benchmarks.coverage.run import parse_args as coverage_args
    from benchmarks.efficiency.cli import parse_args as efficiency_args

    assert coverage_args([]).out == "results/coverage"
    assert efficiency_args(["--model-path", "x"]).out == "results/efficiency"


def test_both_spellings_of_every_llava_flag_and_a_cpu_default_device():
    import torch

    from llava.eval import eval_common, run_llava
    from llava.serve import cli

    for parser in (cli.build_parser(), run_llava.build_parser(), eval_common.build_parser("x", max_new_tokens=8)):
        options = {s for a in parser._actions for s in a.option_strings}
        for name in options - {"-h", "--help"}:
            assert "--" + name[2:].replace("-", "_") in options and "--" + name[2:].replace("_", "-") in options, name
        device = next(a.default for a in parser._actions if "--device" in a.option_strings)
        assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    args = cli.build_parser().parse_args(["--image-file", "x.png", "--max_new_tokens", "7", "--conv_mode", "vicuna_v1"])
    assert (args.max_new_tokens, args.conv_mode) == (7, "vicuna_v1")


def test_negative_decode_by_subtraction_is_not_printed_as_a_time():
    from benchmarks.efficiency.report import _by_subtraction

    assert _by_subtraction(-0.4) == "n/a (noise > signal)"
    assert _by_subtraction(12.345) == "12.3"
    assert _by_subtraction(None) == "n/a"
