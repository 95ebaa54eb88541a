# shellcheck shell=bash
# Sourced by every script under scripts/: use the project's virtualenv without the user
# having to activate it. Order: $HOLOV_VENV, then <repo>/.venv (both made by scripts/env.sh,
# which `bash scripts/demo.sh` and `bash scripts/test.sh` run), then the python already on
# PATH if it can import torch and transformers; otherwise stop and say what to run.
HOLOV_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
holov_use_venv() {
  local venv="${HOLOV_VENV:-$HOLOV_REPO_ROOT/.venv}"
  if [[ -x "$venv/bin/python" ]]; then
    if [[ "${VIRTUAL_ENV:-}" != "$venv" ]]; then
      # shellcheck disable=SC1091
      source "$venv/bin/activate"
    fi
  elif ! python -c "import torch, transformers" >/dev/null 2>&1; then
    echo "error: no project virtualenv at $venv and the python on PATH ($(command -v python || echo none)) cannot import torch/transformers." >&2
    echo "       Run 'bash scripts/test.sh' or 'bash scripts/demo.sh' once (they create $venv), or set HOLOV_VENV." >&2
    return 1
  fi
  export PYTHONPATH="$HOLOV_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
}
holov_use_venv || exit 1
