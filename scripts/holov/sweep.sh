#!/usr/bin/env bash
# Token-budget sweep: every (method, K, benchmark) through scripts/v1_5/eval/<bench>.sh,
# then the paper-style table (Markdown, CSV, plot of score vs K) with llava.eval.tables.
#
#   MODEL=liuhaotian/llava-v1.5-7b METHODS="holov visionzip" BENCHES="pope mme gqa" \
#     KEEPS="576 192 128 64" [PUBLISHED=1] bash scripts/holov/sweep.sh
#
#   METHODS     registry names (default holov); "holov-improved" = METHOD=holov MODE=improved
#   BENCHES     default: all ten (gqa mmbench mmbench_cn mme pope sqa vqav2 textvqa vizwiz seed)
#   KEEPS       visual tokens kept (default "576 192 128 64"); FULL_TOKENS (576) = the unpruned
#               run, done once whatever METHODS says
#   PUBLISHED   1: print the published LLaVA-1.5-7B rows beside ours
#   JOBS        benchmark runs at a time (default 1; more only pays off on CPU with spare
#               cores, since on GPU each run already spreads over GPUS); with JOBS > 1 each
#               run's output goes to RESULTS_ROOT/<model>/logs/
#   KEEP_GOING  1: a failing run is reported at the end instead of stopping the sweep
# Every variable of scripts/v1_5/eval/_common.sh (DATA_ROOT, RESULTS_ROOT, DEVICE, GPUS,
# CONV_MODE, MAX_NEW_TOKENS, ...) passes through. Reruns resume: answered questions are skipped.
set -euo pipefail
EVAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../v1_5/eval" && pwd)"
source "$EVAL_DIR/_common.sh"

[[ -n "${MODEL:-}" ]] || holov_die "set MODEL=<checkpoint path or hub id>"
METHODS="${METHODS:-holov}"
BENCHES="${BENCHES:-gqa mmbench mmbench_cn mme pope sqa vqav2 textvqa vizwiz seed}"
KEEPS="${KEEPS:-576 192 128 64}"
FULL_TOKENS="${FULL_TOKENS:-576}"
RESULTS_ROOT="${RESULTS_ROOT:-results}"
MODEL_NAME="${MODEL_NAME:-$(holov_model_name "$MODEL")}"
JOBS="${JOBS:-1}"
export MODEL RESULTS_ROOT MODEL_NAME FULL_TOKENS
RUN_SET="$RESULTS_ROOT/$MODEL_NAME"
LOG_DIR="$RUN_SET/logs"

for bench in $BENCHES; do
  [[ -f "$EVAL_DIR/$bench.sh" ]] || holov_die "BENCHES: no script $EVAL_DIR/$bench.sh for '$bench'"
done
for keep in $KEEPS; do
  [[ "$keep" =~ ^[1-9][0-9]*$ ]] || holov_die "KEEPS: '$keep' is not a positive integer"
done
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || holov_die "JOBS=$JOBS must be a positive integer"

failures=()
# A killed sweep takes its benchmark scripts (and, through them, their python workers) along.
trap 'jobs -pr | xargs -r kill 2>/dev/null; wait' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
declare -A RUNNING=()  # pid -> "description|log file"

record_status() {  # record_status RC DESCRIPTION [LOG]
  (( $1 == 0 )) && return 0
  [[ -z "${3:-}" ]] || tail -n 20 "$3" >&2
  [[ -n "${KEEP_GOING:-}" ]] || holov_die "$2 failed with rc=$1${3:+ (log: $3)}; KEEP_GOING=1 goes on past failures"
  failures+=("$2 (rc=$1${3:+, log: $3})")
}

reap_one() {
  local pid rc=0 entry
  wait -n -p pid "${!RUNNING[@]}" || rc=$?
  entry="${RUNNING[$pid]}"
  unset "RUNNING[$pid]"
  echo "[sweep] done: ${entry%%|*} (rc=$rc)"
  record_status "$rc" "${entry%%|*}" "${entry#*|}"
}

launch() {  # launch BENCH METHOD MODE TOKENS
  local desc="$1 method=$2 mode=$3 K=$4" rc=0
  if (( JOBS == 1 )); then
    METHOD="$2" MODE="$3" TOKENS="$4" bash "$EVAL_DIR/$1.sh" || rc=$?
    record_status "$rc" "$desc"
    return 0
  fi
  while (( ${#RUNNING[@]} >= JOBS )); do reap_one; done
  mkdir -p "$LOG_DIR"
  local log="$LOG_DIR/$1_$2-$3_k$4.log"
  METHOD="$2" MODE="$3" TOKENS="$4" bash "$EVAL_DIR/$1.sh" >"$log" 2>&1 &
  RUNNING[$!]="$desc|$log"
  echo "[sweep] started: $desc (log: $log)"
}

trap '(( ${#RUNNING[@]} )) && kill "${!RUNNING[@]}" 2>/dev/null; exit 130' INT TERM
for keep in $KEEPS; do
  if [[ "$keep" == "$FULL_TOKENS" ]]; then
    for bench in $BENCHES; do launch "$bench" none faithful "$keep"; done
    continue
  fi
  for method in $METHODS; do
    mode=faithful
    if [[ "$method" == holov-* ]]; then
      mode="${method#holov-}"
      method=holov
    fi
    for bench in $BENCHES; do launch "$bench" "$method" "$mode" "$keep"; done
  done
done
while (( ${#RUNNING[@]} )); do reap_one; done
trap - INT TERM

TABLE_ARGS=()
[[ -z "${PUBLISHED:-}" ]] || TABLE_ARGS=(--published)
python -m llava.eval.tables "$RUN_SET" --out "$RUN_SET/table" "${TABLE_ARGS[@]}"

if (( ${#failures[@]} )); then
  printf 'failed runs:\n' >&2
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi
