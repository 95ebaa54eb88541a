#!/usr/bin/env bash
# `python -m lmms_eval eval ARGS...` in the project's virtualenv, with an honest exit code.
#
#   bash scripts/lmms_eval.sh --model llava_holov --model_args pretrained=...,holov_tokens=64 \
#       --tasks pope --output_path results/lmms/holov_64
#
# lmms-eval 0.7.x exits 0 even when the model or a task crashed; this script exits 3 unless
# the run wrote a new *_results.json under --output_path (which it therefore requires).
set -uo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/use_venv.sh"

out=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --output_path) out="${args[$((i + 1))]:-}" ;;
    --output_path=*) out="${args[$i]#*=}" ;;
  esac
done
if [[ -z "$out" ]]; then
  echo "error: pass --output_path DIR: the results file written there is how this script knows the run worked" >&2
  exit 2
fi
mkdir -p "$out"
stamp="$(mktemp)"
trap 'rm -f "$stamp"' EXIT
python -m lmms_eval eval "$@"
rc=$?
if (( rc != 0 )); then
  echo "error: lmms-eval exited with status $rc" >&2
  exit "$rc"
fi
results="$(find "$out" -name '*_results.json' -newer "$stamp" -print -quit)"
if [[ -z "$results" ]]; then
  echo "error: lmms-eval exited 0 but wrote no *_results.json under $out: the evaluation failed (see its log above)" >&2
  exit 3
fi
echo "[lmms-eval] results: $results"
