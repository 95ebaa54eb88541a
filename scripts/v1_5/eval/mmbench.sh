#!/usr/bin/env bash
# MMBench dev (English): CircularEval accuracy, plus the upload table (answers_upload/).
# MMBENCH_ALL_ROUNDS=1 asks every rotation itself (for a TSV without the circular copies).
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/mmbench.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
SPLIT="${MMBENCH_SPLIT:-mmbench_dev_20230712}"
ROUNDS=()
[[ -z "${MMBENCH_ALL_ROUNDS:-}" ]] || ROUNDS=(--all-rounds)
holov_eval_init mmbench "$SPLIT${ROUNDS:+_all_rounds}"
D="$DATA_ROOT/mmbench"
holov_run_chunks model_vqa_mmbench --question-file "$D/$SPLIT.tsv" --single-pred-prompt "${ROUNDS[@]}"
holov_score mmbench --question-file "$D/$SPLIT.tsv" --name mmbench --submission-file "$OUT_DIR/answers_upload/$SPLIT.xlsx"
