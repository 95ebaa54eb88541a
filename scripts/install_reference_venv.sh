#!/usr/bin/env bash
# Builds (once) a side virtualenv with the library versions the original LLaVA-1.5 code runs
# on: transformers 4.37.2 with its slow sentencepiece LlamaTokenizer. Tests use it as the
# reference for prompt token ids and for loading the checkpoints our code writes
# (tests/test_reference_tokenizer.py, tests/test_checkpoint_compat.py). It lives outside the
# repository and is never imported by the project; tests skip when it is missing (outside CI).
#   HOLOV_REFERENCE_VENV  where it lives (default ~/.cache/holov-llava/venv-transformers-4.37.2)
#   PYTHON                interpreter to create it from (default python3)
#   TORCH_SPEC            torch requirement installed first (default torch==2.13.0, the CPU
#                         wheel on our machines; an unpinned torch pulls CUDA wheels)
# When the venv already imports what is needed it only checks (a few seconds).
set -euo pipefail
VENV="${HOLOV_REFERENCE_VENV:-$HOME/.cache/holov-llava/venv-transformers-4.37.2}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
# peft 0.8.2: the peft of the transformers 4.37 era (LoRA checkpoints); pillow: CLIPImageProcessor.
REQS=("transformers==4.37.2" "sentencepiece" "protobuf" "peft==0.8.2" "pillow")

check() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import google.protobuf, peft, PIL, safetensors, sentencepiece, torch, transformers
from transformers import CLIPImageProcessor, CLIPVisionModel, LlamaForCausalLM, LlamaTokenizer  # noqa: F401
assert transformers.__version__ == "4.37.2", transformers.__version__
assert peft.__version__ == "0.8.2", peft.__version__
EOF
}

if check; then
  echo "[reference-venv] $VENV is ready (transformers 4.37.2, peft 0.8.2)"
  exit 0
fi
start=$(date +%s)
echo "[reference-venv] building $VENV (transformers 4.37.2, slow sentencepiece tokenizer)"
mkdir -p "$(dirname "$VENV")"
if [ ! -x "$VENV/bin/python" ]; then
  # From inside another virtualenv, venv builds on that one's base interpreter.
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC"
torch_version="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("torch"))')"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" > "$constraints"
"${PIP[@]}" -c "$constraints" "${REQS[@]}"
if ! check; then
  echo "[reference-venv] ERROR: $VENV does not import transformers 4.37.2 + sentencepiece + peft + pillow after the install" >&2
  "$VENV/bin/python" -c "import transformers, sentencepiece, peft, PIL; print(transformers.__version__)" >&2 || true
  exit 1
fi
echo "[reference-venv] ok: $VENV in $(( $(date +%s) - start )) s"
