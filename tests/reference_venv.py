"""The transformers 4.37.2 side virtualenv (built by scripts/install_reference_venv.sh): the
library versions the original LLaVA-1.5 code runs on, used as the reference in
test_reference_tokenizer.py and test_checkpoint_compat.py.

Scripts run there in a subprocess that never sees this repository (no PYTHONPATH, a
temporary working directory), read a JSON payload from stdin and print one JSON line
prefixed with ``RESULT``. Without the venv the tests skip, except under CI (``CI`` set),
where a missing reference is a failure."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "holov-llava", "venv-transformers-4.37.2")
RESULT = "RESULT "

# Prepended to every script: refuse to run against anything but 4.37.2, and a way to answer.
PRELUDE = f'''
import json, sys
import transformers
assert transformers.__version__ == "4.37.2", transformers.__version__
transformers.logging.set_verbosity_error()
payload = json.load(sys.stdin)

def answer(obj):
    print({RESULT!r} + json.dumps(obj), flush=True)
'''


def reference_venv() -> str:
    return os.environ.get("HOLOV_REFERENCE_VENV") or DEFAULT_VENV


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def reference_python() -> str:
    """The side venv's interpreter; skips the test (fails it under CI) when it is absent."""
    venv = reference_venv()
    python = os.path.join(venv, "bin", "python")
    if os.path.isfile(python) and os.access(python, os.X_OK):
        return python
    reason = (f"the transformers 4.37.2 reference virtualenv is missing ({python} not found): build it with "
              f"`bash scripts/install_reference_venv.sh` (HOLOV_REFERENCE_VENV picks another place)")
    if _in_ci():
        pytest.fail(reason + " -- required under CI", pytrace=False)
    pytest.skip(reason)


def run_reference(script: str, payload, timeout: float = 300):
    """Run ``PRELUDE + script`` with the side venv's python; returns what it ``answer``-ed."""
    python = reference_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([python, "-c", PRELUDE + script], input=json.dumps(payload), capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or len(lines) != 1:
        raise AssertionError(f"the reference script (transformers 4.37.2) failed with exit code {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
    return json.loads(lines[0][len(RESULT):])
