#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/test.sh: make (once) and activate a virtualenv
# with everything the project needs. Re-running is cheap: installs are skipped while
# setup.py is unchanged.
#   HOLOV_VENV    where the virtualenv lives (default: <repo>/.venv)
#   HOLOV_EXTRAS  pip extras to install (default: dev)
#   TORCH_SPEC    torch requirement installed first when no torch is importable
#                 (default torch==2.13.0: the CPU wheel on our CPU machines)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOLOV_VENV="${HOLOV_VENV:-$REPO_ROOT/.venv}"
HOLOV_EXTRAS="${HOLOV_EXTRAS:-dev}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$HOLOV_VENV/bin/python" ]; then
  # A torch already installed for the system python is kept: the venv sees it.
  if python3 -c "import torch" >/dev/null 2>&1; then
    echo "[env] creating $HOLOV_VENV (reusing the installed torch $(python3 -c 'import torch; print(torch.__version__)'))"
    python3 -m venv --system-site-packages "$HOLOV_VENV"
  else
    echo "[env] creating $HOLOV_VENV"
    python3 -m venv "$HOLOV_VENV"
  fi
fi
# shellcheck disable=SC1091
source "$HOLOV_VENV/bin/activate"

if ! python -c "import torch" >/dev/null 2>&1; then
  echo "[env] installing $TORCH_SPEC first (never an unpinned torch: it pulls CUDA wheels)"
  pip install -q "$TORCH_SPEC"
fi

# DeepSpeed (train extra) builds no CUDA ops at install time; they JIT-build when used.
export DS_BUILD_OPS="${DS_BUILD_OPS:-0}"
stamp="$HOLOV_VENV/.holov-installed-$(cat "$REPO_ROOT/setup.py" "$REPO_ROOT/scripts/env.sh" | sha1sum | cut -c1-12)-${HOLOV_EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "[env] installing holov-llava[$HOLOV_EXTRAS] (editable)"
  pip install -q -e "$REPO_ROOT[$HOLOV_EXTRAS]"
  touch "$stamp"
fi
# Without a GPU, tell DeepSpeed (imported by transformers/accelerate when installed) to use
# its CPU accelerator instead of probing for one and logging about it on every import.
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; }; then
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
