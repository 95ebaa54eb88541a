#!/usr/bin/env bash
# VQAv2 test-dev: the EvalAI submission file (answers_upload/), and a local soft accuracy
# when annotations for the questions asked are present (VQAV2_ANNOTATION, default
# $DATA_ROOT/vqav2/v2_mscoco_val2014_annotations.json; test-dev itself has none).
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/vqav2.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
SPLIT="${VQAV2_SPLIT:-llava_vqav2_mscoco_test-dev2015}"
holov_eval_init vqav2 "$SPLIT"
D="$DATA_ROOT/vqav2"
holov_run_chunks model_vqa_loader --question-file "$D/$SPLIT.jsonl" --image-folder "$D/test2015"
holov_require "$D/llava_vqav2_mscoco_test2015.jsonl"
holov_convert vqav2 --question-file "$D/llava_vqav2_mscoco_test2015.jsonl" \
  --submission-file "$OUT_DIR/answers_upload/$SPLIT.json"
ANNOTATION="${VQAV2_ANNOTATION:-$D/v2_mscoco_val2014_annotations.json}"
if [[ -f "$ANNOTATION" ]]; then
  holov_score vqav2 --annotation-file "$ANNOTATION" --question-file "$D/$SPLIT.jsonl"
else
  echo "[vqav2] no $ANNOTATION: submit $OUT_DIR/answers_upload/$SPLIT.json to EvalAI for the score"
fi
