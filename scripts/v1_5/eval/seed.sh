#!/usr/bin/env bash
# SEED-Bench (v1) image questions: accuracy, plus the leaderboard JSONL (answers_upload/).
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/seed.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
holov_eval_init seed llava-seed-bench
D="$DATA_ROOT/seed_bench"
holov_run_chunks model_vqa_loader --question-file "$D/llava-seed-bench.jsonl" --image-folder "$D"
holov_score seed --annotation-file "$D/SEED-Bench.json" --submission-file "$OUT_DIR/answers_upload/seed.jsonl"
