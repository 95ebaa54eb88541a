#!/usr/bin/env bash
# POPE (COCO adversarial / popular / random): F1 per split and their mean.
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/pope.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
holov_eval_init pope llava_pope_test
D="$DATA_ROOT/pope"
holov_run_chunks model_vqa_loader --question-file "$D/llava_pope_test.jsonl" --image-folder "$D/val2014"
holov_score pope --question-file "$D/llava_pope_test.jsonl" --annotation-dir "$D/coco"
