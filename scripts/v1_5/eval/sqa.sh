#!/usr/bin/env bash
# ScienceQA test: IMG accuracy (SQA-IMG, the number LLaVA-1.5 reports), all-question accuracy.
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/sqa.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
holov_eval_init sqa llava_test_CQM-A
D="$DATA_ROOT/scienceqa"
holov_run_chunks model_vqa_science --question-file "$D/llava_test_CQM-A.json" --image-folder "$D/images/test" \
  --single-pred-prompt
holov_score scienceqa --base-dir "$D" --split test
