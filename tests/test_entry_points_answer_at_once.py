"""Issue 12, item 18: ``--help`` and a mistyped flag answer at once.

What made them slow was importing torch and transformers before argparse ran; so these
tests check that, after the answer, neither was imported (not the wall time)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "playground/fixtures/train/images/green_triangle.png"

# Runs one entry point as `python -m` would (runpy), then reports its exit code and which
# heavy packages it had imported by then, as one JSON line on the real stderr.
WRAPPER = """
import json, runpy, sys
module, args = sys.argv[1], sys.argv[2:]
sys.argv = [module] + args
code = None
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
print("REPORT " + json.dumps({"code": code, "torch": "torch" in sys.modules,
                              "transformers": "transformers" in sys.modules}), file=sys.__stderr__)
"""

ENTRY_POINTS = ["llava.serve.cli", "llava.eval.run_llava", "llava.eval.model_vqa_loader", "llava.eval.model_vqa",
                "llava.eval.model_vqa_mmbench", "llava.eval.model_vqa_science"]
# The flags each one requires, so that a mistyped flag is the only error left.
REQUIRED = {
    "llava.serve.cli": ["--image-file", str(IMAGE)],
    "llava.eval.run_llava": ["--image-file", str(IMAGE), "--query", "q"],
}
EVAL_REQUIRED = ["--model-path", "m", "--question-file", "q.jsonl", "--answers-file", "a.jsonl", "--image-folder", "."]


def run_entry_point(module, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HOLOV_PRUNING", None)
    done = subprocess.run([sys.executable, "-c", WRAPPER, module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    reports = [line for line in done.stderr.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and len(reports) == 1, done.stderr[-3000:]
    return json.loads(reports[0][len("REPORT "):]), done.stdout, done.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_imports_neither_torch_nor_transformers(module):
    report, out, _ = run_entry_point(module, "--help")
    assert report == {"code": 0, "torch": False, "transformers": False}
    assert out.startswith("usage: ")
    assert "--holov-tokens HOLOV_TOKENS, --holov_tokens HOLOV_TOKENS" in out  # the pruning flags are listed
    assert "--device DEVICE" in out


@pytest.mark.subprocess
def test_bare_mistyped_flag_of_the_chat_cli_imports_no_torch():
    report, _, err = run_entry_point("llava.serve.cli", "--no-such-flag")
    assert report == {"code": 2, "torch": False, "transformers": False}
    assert "error: the following arguments are required: --image-file" in err


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_mistyped_flag_is_refused_without_torch(module):
    required = REQUIRED.get(module, EVAL_REQUIRED)
    report, _, err = run_entry_point(module, *required, "--no-such-flag")
    assert report == {"code": 2, "torch": False, "transformers": False}
    assert "error: unrecognized arguments: --no-such-flag" in err


@pytest.mark.subprocess
def test_a_bad_choice_of_a_pruning_flag_is_refused_without_torch():
    report, _, err = run_entry_point("llava.serve.cli", *REQUIRED["llava.serve.cli"], "--holov-mode", "fathful")
    assert report == {"code": 2, "torch": False, "transformers": False}
    assert "argument --holov-mode/--holov_mode: invalid choice: 'fathful' (choose from" in err


@pytest.mark.subprocess
def test_an_unknown_method_is_refused_after_parsing_before_the_model_code_loads():
    # A method name needs the registry (the built-in methods import torch), so it is checked
    # after parsing; the model code (transformers) is still never imported.
    report, _, err = run_entry_point("llava.serve.cli", *REQUIRED["llava.serve.cli"], "--device", "cpu",
                                     "--prune-method", "holv")
    assert report == {"code": 2, "torch": True, "transformers": False}
    assert "error: unknown pruning method 'holv'; known methods: " in err and "holov" in err


# The pruning library itself: torch-free until a method is looked up, and the built-in
# methods registered before the first lookup or registration, whichever comes first.
LIBRARY = """
import json, sys
import holov_patches, holov_patches.cli_args
from holov_patches import PruningConfig
before = "torch" in sys.modules
first = sys.argv[1]
if first == "lookup":
    result = [PruningConfig(method="holov", keep=8).method, "cls_topk" in holov_patches.list_pruners()]
else:  # a registration that takes a built-in's name, before anything looked one up
    try:
        holov_patches.register_pruner("holov")(lambda tokens, cls_attn, keep, grid=None: None)
        result = "registered"
    except ValueError as err:
        result = str(err)
print(json.dumps([before, result, "torch" in sys.modules]))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("first, expected", [
    ("lookup", ["holov", True]),
    ("register", "pruner 'holov' is already registered (by holov_patches.methods.holov)"),
])
def test_the_library_imports_without_torch_and_registers_builtins_before_first_use(first, expected):
    done = subprocess.run([sys.executable, "-c", LIBRARY, first], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == [False, expected, True]


def test_a_failing_builtin_loader_reraises_and_takes_back_what_it_filed(monkeypatch):
    from holov_patches import registry

    calls = []

    def broken_loader():
        calls.append(1)
        registry.register_pruner("t_half_loaded")(lambda tokens, cls_attn, keep, grid=None: None)
        raise ImportError("no module named 'torch' (simulated)")

    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_builtins_loaded", False)
    monkeypatch.setattr(registry, "_builtin_loader", broken_loader)
    for attempt in (1, 2):  # not swallowed, and tried again from scratch next time
        with pytest.raises(ImportError, match="simulated"):
            registry.list_pruners()
        assert registry._REGISTRY == {} and len(calls) == attempt
