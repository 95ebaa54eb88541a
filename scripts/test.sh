#!/usr/bin/env bash
# Installs what the tests need into a virtualenv (scripts/env.sh) and runs the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k holov -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
HOLOV_EXTRAS="${HOLOV_EXTRAS:-dev,train,eval}" source scripts/env.sh
# lmms-eval goes in without the CUDA torchvision its metadata asks for (see the script).
bash scripts/install_lmms_eval.sh
python -m pytest -q tests "$@"
