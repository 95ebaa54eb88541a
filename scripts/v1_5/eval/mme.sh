#!/usr/bin/env bash
# MME: perception + cognition (the pruning papers' convention), each also alone.
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/mme.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
holov_eval_init mme llava_mme
D="$DATA_ROOT/MME"
holov_run_chunks model_vqa_loader --question-file "$D/llava_mme.jsonl" --image-folder "$D/MME_Benchmark_release_version"
holov_score mme --data-dir "$D/MME_Benchmark_release_version"
