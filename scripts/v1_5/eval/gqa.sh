#!/usr/bin/env bash
# GQA testdev-balanced: exact-match accuracy, plus the predictions file for GQA's eval.py.
# Usage: MODEL=... TOKENS=64 [METHOD=holov MODE=faithful] bash scripts/v1_5/eval/gqa.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
SPLIT="${GQA_SPLIT:-llava_gqa_testdev_balanced}"
holov_eval_init gqa "$SPLIT"
D="$DATA_ROOT/gqa"
holov_run_chunks model_vqa_loader --question-file "$D/$SPLIT.jsonl" --image-folder "$D/data/images"
holov_require "$D/data/testdev_balanced_questions.json"
holov_score gqa --annotation-file "$D/data/testdev_balanced_questions.json" \
  --submission-file "$OUT_DIR/answers_upload/testdev_balanced_predictions.json"
