#!/usr/bin/env bash
# VizWiz-VQA: the EvalAI submission file for the test split (answers_upload/), or a local
# soft accuracy for VIZWIZ_SPLIT=val (llava_val.jsonl + val.json, which have answers).
# Usage: MODEL=... TOKENS=64 [VIZWIZ_SPLIT=test|val] bash scripts/v1_5/eval/vizwiz.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
SPLIT="${VIZWIZ_SPLIT:-test}"
case "$SPLIT" in test|val) ;; *) holov_die "VIZWIZ_SPLIT=$SPLIT must be test or val" ;; esac
holov_eval_init vizwiz "llava_$SPLIT"
D="$DATA_ROOT/vizwiz"
holov_run_chunks model_vqa_loader --question-file "$D/llava_$SPLIT.jsonl" --image-folder "$D/$SPLIT"
if [[ "$SPLIT" == val ]]; then
  holov_require "$D/val.json"
  holov_score vizwiz --question-file "$D/llava_val.jsonl" --annotation-file "$D/val.json"
else
  holov_convert vizwiz --question-file "$D/llava_test.jsonl" \
    --submission-file "$OUT_DIR/answers_upload/vizwiz_test.json"
  echo "[vizwiz] submit $OUT_DIR/answers_upload/vizwiz_test.json to EvalAI for the test score"
fi
