#!/usr/bin/env bash
# MMBench-CN dev: CircularEval accuracy with the Chinese instruction, plus the upload table.
# The TSV is read from $DATA_ROOT/mmbench_cn/ (LLaVA's script) or else $DATA_ROOT/mmbench/
# (LLaVA's download guide). MMBENCH_ALL_ROUNDS=1 as in mmbench.sh.
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/mmbench_cn.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
SPLIT="${MMBENCH_CN_SPLIT:-mmbench_dev_cn_20231003}"
ROUNDS=()
[[ -z "${MMBENCH_ALL_ROUNDS:-}" ]] || ROUNDS=(--all-rounds)
holov_eval_init mmbench_cn "$SPLIT${ROUNDS:+_all_rounds}"
D="$DATA_ROOT/mmbench_cn"
[[ -f "$D/$SPLIT.tsv" ]] || D="$DATA_ROOT/mmbench"
holov_run_chunks model_vqa_mmbench --question-file "$D/$SPLIT.tsv" --single-pred-prompt --lang cn "${ROUNDS[@]}"
holov_score mmbench --question-file "$D/$SPLIT.tsv" --name mmbench_cn --submission-file "$OUT_DIR/answers_upload/$SPLIT.xlsx"
