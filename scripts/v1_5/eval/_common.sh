# shellcheck shell=bash
# Shell functions shared by scripts/v1_5/eval/<bench>.sh (sourced, not run).
#
# A benchmark script is: holov_eval_init <bench>; holov_run_chunks <entry point> <flags>;
# holov_score <scorer module> <flags>. Data paths follow LLaVA's evaluation layout under
# $DATA_ROOT (see playground/data/eval/README.md); outputs go to one directory per
# (method, K):
#   $RESULTS_ROOT/<model name>/<label>_k<K>/<bench>/
#       answers/<split>/<CHUNKS>_<IDX>.jsonl  one answers file per chunk (resumable: a
#                                      rerun answers only the questions still missing)
#       answers/<split>/merge.jsonl    the chunks concatenated in order
#       result.json                    {"benchmark", "headline", "metrics", "n"} from the scorer
#       answers_upload/...             submission files for the benchmarks scored by a server
# <label> is "unpruned" (K = FULL_TOKENS), the method name ("holov-improved" for HoloV's
# improved mode), then "-<option>-<value>" for every other pruning option set (e.g.
# holov-improved-rank_by-attention_k64), so two settings never share a folder.
#
# Environment (all optional except MODEL):
#   MODEL           checkpoint directory or hub id
#   MODEL_BASE      base LLM for LoRA / projector-only checkpoints
#   MODEL_NAME      name of the results folder (default: LLaVA's name for MODEL's path)
#   TOKENS          visual tokens kept per image (K); empty or FULL_TOKENS = no pruning
#   FULL_TOKENS     the model's visual tokens per image (default 576, LLaVA-1.5)
#   METHOD          pruning method from the registry (default holov)
#   MODE            HoloV mode: faithful (default) or improved
#   CROPS, ALPHA    HoloV crops P and diversity weight (default: the method's)
#   CROP_SHAPE, RANK_BY, DIVERSITY_SCALE   HoloV improved-mode options
#   POSITION_IDS    compact or original positions after pruning
#   ATTENTION_DTYPE model (the [CLS] row in the tower dtype, as the authors) or float32
#   (one variable per row of holov_patches/cli_args.py FLAGS)
#   DATA_ROOT       benchmark data (default playground/data/eval)
#   RESULTS_ROOT    where results go (default results)
#   CONV_MODE       conversation template (default vicuna_v1)
#   DEVICE          cuda or cpu (default: cuda when nvidia-smi works, else cpu)
#   GPUS            comma list of GPUs, one chunk each (default: CUDA_VISIBLE_DEVICES, else
#                   every GPU nvidia-smi lists); on CPU, CPU_CHUNKS processes (default 1)
#   TEMPERATURE     default 0 (greedy, as LLaVA's scripts)
#   MAX_NEW_TOKENS  override the entry point's default (128 / 1024)
#   EVAL_ARGS       extra flags for every entry point (split on spaces)
# Pruning is always passed as flags (--prune-method none when unpruned), so neither
# HOLOV_PRUNING nor a checkpoint's saved setting changes what a run directory means.

# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../../use_venv.sh"  # the project's .venv, activated if needed

holov_die() {
  echo "error: $*" >&2
  exit 2
}

# LLaVA's get_model_name_from_path: the last path part, or <parent>_checkpoint-N.
holov_model_name() {
  local path="${1%/}" base parent
  base="${path##*/}"
  if [[ "$base" == checkpoint-* ]]; then
    parent="${path%/*}"
    base="${parent##*/}_$base"
  fi
  printf '%s\n' "$base"
}

holov_default_device() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo cuda
  else
    echo cpu
  fi
}

# holov_eval_init BENCH SPLIT: sets BENCH, MODEL_NAME, RUN_LABEL, RUN_K, OUT_DIR,
# ANSWERS_DIR, ANSWERS, CHUNKS, GPULIST, PRUNE_FLAGS and GEN_FLAGS for the functions below.
# SPLIT (the question file's name) keeps the answers of two splits of one benchmark apart.
holov_eval_init() {
  BENCH="${1:?holov_eval_init needs the benchmark name}"
  local split="${2:?holov_eval_init needs the split (question file name)}"
  [[ -n "${MODEL:-}" ]] || holov_die "set MODEL=<checkpoint path or hub id> (e.g. MODEL=liuhaotian/llava-v1.5-7b TOKENS=64 bash $0)"
  DATA_ROOT="${DATA_ROOT:-playground/data/eval}"
  RESULTS_ROOT="${RESULTS_ROOT:-results}"
  CONV_MODE="${CONV_MODE:-vicuna_v1}"
  DEVICE="${DEVICE:-$(holov_default_device)}"
  FULL_TOKENS="${FULL_TOKENS:-576}"
  TEMPERATURE="${TEMPERATURE:-0}"
  MODEL_NAME="${MODEL_NAME:-$(holov_model_name "$MODEL")}"
  [[ -d "$DATA_ROOT" ]] || holov_die "DATA_ROOT=$DATA_ROOT is not a directory; see playground/data/eval/README.md for the layout"
  case "$DEVICE" in cuda|cpu) ;; *) holov_die "DEVICE=$DEVICE must be cuda or cpu" ;; esac
  [[ "$FULL_TOKENS" =~ ^[1-9][0-9]*$ ]] || holov_die "FULL_TOKENS=$FULL_TOKENS must be a positive integer"

  # The pruning variables -> flags and the results label, from the one flag table
  # (holov_patches/cli_args.py): every option that is set is passed and named in the label.
  local setting
  setting="$(FULL_TOKENS="$FULL_TOKENS" python -m holov_patches.cli_args --shell)" || holov_die "bad pruning variables (see above)"
  eval "$setting"

  GEN_FLAGS=(--temperature "$TEMPERATURE" --conv-mode "$CONV_MODE" --device "$DEVICE")
  [[ -z "${MAX_NEW_TOKENS:-}" ]] || GEN_FLAGS+=(--max_new_tokens "$MAX_NEW_TOKENS")
  [[ -z "${MODEL_BASE:-}" ]] || GEN_FLAGS+=(--model-base "$MODEL_BASE")
  if [[ -n "${EVAL_ARGS:-}" ]]; then
    local extra
    read -r -a extra <<<"$EVAL_ARGS"
    GEN_FLAGS+=("${extra[@]}")
  fi

  if [[ "$DEVICE" == cuda ]]; then
    local gpus="${GPUS:-${CUDA_VISIBLE_DEVICES:-}}"
    if [[ -z "$gpus" ]]; then
      gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)"
    fi
    IFS=',' read -r -a GPULIST <<<"$gpus"
  else
    local n="${CPU_CHUNKS:-1}"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || holov_die "CPU_CHUNKS=$n must be a positive integer"
    GPULIST=()
    local i
    for ((i = 0; i < n; i++)); do GPULIST+=(""); done
  fi
  CHUNKS=${#GPULIST[@]}
  (( CHUNKS > 0 )) || holov_die "no GPU found; set GPUS=0,1,... or DEVICE=cpu"

  OUT_DIR="$RESULTS_ROOT/$MODEL_NAME/${RUN_LABEL}_k${RUN_K}/$BENCH"
  ANSWERS_DIR="$OUT_DIR/answers/$split"
  ANSWERS="$ANSWERS_DIR/merge.jsonl"
  mkdir -p "$ANSWERS_DIR"
  echo "[$BENCH] model=$MODEL_NAME run=${RUN_LABEL}_k${RUN_K} device=$DEVICE chunks=$CHUNKS -> $OUT_DIR"
}

# holov_require PATH...: fail early, naming the missing file and the data guide.
holov_require() {
  local path
  for path in "$@"; do
    [[ -e "$path" ]] || holov_die "$BENCH: $path not found; see playground/data/eval/README.md for what to download and where it goes"
  done
}

# _holov_stop_chunks PID...: SIGTERM the chunk jobs still running and wait until they are
# gone (so their answers-file locks are free when this script has exited).
_holov_stop_chunks() {
  (( $# )) || return 0
  kill "$@" 2>/dev/null
  wait "$@" 2>/dev/null
  return 0
}

# holov_run_chunks ENTRY FLAGS...: run `python -m llava.eval.ENTRY` once per chunk in
# parallel (chunk i on GPU GPULIST[i]), wait for all, then merge the chunk files into
# $ANSWERS. --question-file / --image-folder arguments are checked to exist first.
holov_run_chunks() {
  local entry="$1"
  shift
  local args=("$@") i
  for ((i = 0; i + 1 < ${#args[@]}; i++)); do
    case "${args[i]}" in --question-file|--image-folder) holov_require "${args[i + 1]}" ;; esac
  done
  local pids=() idx parent_pid="$BASHPID"
  # The chunk jobs end with this script: on Ctrl-C, a kill, or any exit (trap), and even on a
  # `kill -9` of it, which no trap sees: each worker is started with HOLOV_DIE_WITH_PARENT, so
  # the kernel sends it SIGTERM when this shell dies (llava.utils.die_with_parent). Their
  # answers so far stay; a rerun resumes them.
  trap '_holov_stop_chunks "${pids[@]}"; exit 130' INT TERM
  trap '_holov_stop_chunks "${pids[@]}"' EXIT
  for ((idx = 0; idx < CHUNKS; idx++)); do
    local env_gpu=(env "HOLOV_DIE_WITH_PARENT=$parent_pid")
    [[ "$DEVICE" != cuda ]] || env_gpu+=("CUDA_VISIBLE_DEVICES=${GPULIST[idx]}")
    "${env_gpu[@]}" python -m "llava.eval.$entry" --model-path "$MODEL" "${args[@]}" \
      --answers-file "$ANSWERS_DIR/${CHUNKS}_${idx}.jsonl" \
      --num-chunks "$CHUNKS" --chunk-idx "$idx" "${GEN_FLAGS[@]}" "${PRUNE_FLAGS[@]}" &
    pids+=($!)
  done
  local failed=0
  for idx in "${!pids[@]}"; do
    wait "${pids[idx]}" || { echo "error: $BENCH chunk $idx failed (rc=$?)" >&2; failed=1; }
  done
  pids=()
  trap - INT TERM EXIT
  (( failed == 0 )) || exit 1
  : >"$ANSWERS"
  for ((idx = 0; idx < CHUNKS; idx++)); do
    cat "$ANSWERS_DIR/${CHUNKS}_${idx}.jsonl" >>"$ANSWERS"
  done
  echo "[$BENCH] $(wc -l <"$ANSWERS") answers in $ANSWERS"
}

# holov_score MODULE FLAGS...: python -m llava.eval.scoring.MODULE on $ANSWERS, writing
# $OUT_DIR/result.json (the file the tables read).
holov_score() {
  local module="$1"
  shift
  python -m "llava.eval.scoring.$module" --answers-file "$ANSWERS" --result-file "$OUT_DIR/result.json" "$@"
}

# holov_convert MODULE FLAGS...: the same scorer CLI without a result file, for the
# submission files of benchmarks scored by a server (VQAv2 test-dev, VizWiz test).
holov_convert() {
  local module="$1"
  shift
  python -m "llava.eval.scoring.$module" --answers-file "$ANSWERS" "$@"
}
