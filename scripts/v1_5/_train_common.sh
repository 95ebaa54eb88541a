# shellcheck shell=bash
# Shell functions and defaults shared by the LLaVA-1.5 training scripts pretrain.sh,
# finetune_holov.sh and finetune_lora_holov.sh in scripts/v1_5 (sourced, not run), so that
# each script states only its own recipe: its ZeRO config, hyper-parameters and train.py
# flags. Each script's header documents the variables and their defaults.
#
# A training script is:
#   holov_train_init <default ZeRO config> <save steps>   # DEEPSPEED, SMOKE-mode defaults, HW_FLAGS
#   its own defaults (MODEL, DATA, OUTPUT_DIR, ...; holov_finetune_init for the two fine-tunes)
#   holov_train_args <conversation version> <batch> <lr> <its flags...>   # sets TRAIN_ARGS
#   holov_train_launch <its leading flags...> "${TRAIN_ARGS[@]}" "$@"
#
# SMOKE=1 is a CPU run on llava.train.smoke's tiny random models and playground/fixtures/train
# (SMOKE_DIR, MAX_STEPS); DEEPSPEED=none trains in one process without DeepSpeed.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit
# shellcheck disable=SC1091
source "$ROOT/scripts/use_venv.sh"  # the project's .venv, activated if needed

SMOKE="${SMOKE:-0}"
TOKENS="${TOKENS:-64}"
METHOD="${METHOD:-holov}"
MODE="${MODE:-faithful}"

# holov_train_init ZERO_CONFIG SAVE_STEPS: sets DEEPSPEED (default ZERO_CONFIG) and HW_FLAGS,
# the train.py flags for the hardware: bf16 / tf32 on GPUs with a checkpoint every SAVE_STEPS,
# or under SMOKE=1 a CPU run of MAX_STEPS steps that saves only at the end (with SMOKE_DIR,
# the fixture IMAGE_FOLDER and BATCH 2).
holov_train_init() {
  local zero_config="${1:?holov_train_init needs the default ZeRO config}"
  local save_steps="${2:?holov_train_init needs the checkpoint interval in steps}"
  DEEPSPEED="${DEEPSPEED:-$zero_config}"
  if [[ "$SMOKE" == 1 ]]; then
    SMOKE_DIR="${SMOKE_DIR:-$ROOT/playground/tiny/smoke}"
    IMAGE_FOLDER="${IMAGE_FOLDER:-$ROOT/playground/fixtures/train/images}"
    BATCH="${BATCH:-2}"
    HW_FLAGS=(--use_cpu True --bf16 False --max_steps "${MAX_STEPS:-3}" --dataloader_num_workers 0 --save_strategy no)
  else
    HW_FLAGS=(--bf16 True --tf32 True --dataloader_num_workers 4 --save_strategy steps --save_steps "$save_steps"
              --save_total_limit 1)
  fi
}

# holov_smoke_models: build llava.train.smoke's tiny random models under SMOKE_DIR (once;
# later calls reuse them).
holov_smoke_models() {
  python -m llava.train.smoke "$SMOKE_DIR" >/dev/null
}

# holov_finetune_init: MODEL, DATA and IMAGE_FOLDER defaults of the two fine-tunes (a LLaVA
# checkpoint on the 665k mix; SMOKE=1: the tiny LLaVA on the fixture conversations), and
# FINETUNE_FLAGS: a Vicuna start's tower and projector flags (VISION_TOWER, PROJECTOR) and the
# data flags of LLaVA-1.5's fine-tune.
holov_finetune_init() {
  if [[ "$SMOKE" == 1 ]]; then
    if [[ -z "${MODEL:-}" ]]; then
      holov_smoke_models
      MODEL="$SMOKE_DIR/llava-v1.5-tiny"
    fi
    DATA="${DATA:-$ROOT/playground/fixtures/train/conversations.json}"
  fi
  MODEL="${MODEL:-liuhaotian/llava-v1.5-7b}"
  DATA="${DATA:-./playground/data/llava_v1_5_mix665k.json}"
  IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"

  FINETUNE_FLAGS=()
  if [[ -n "${VISION_TOWER:-}" ]]; then
    FINETUNE_FLAGS+=(--vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2
                     --mm_use_im_start_end False --mm_use_im_patch_token False)
  fi
  if [[ -n "${PROJECTOR:-}" ]]; then
    FINETUNE_FLAGS+=(--pretrain_mm_mlp_adapter "$PROJECTOR")
  fi
  FINETUNE_FLAGS+=(--image_aspect_ratio pad --group_by_modality_length True)
}

# holov_train_args VERSION BATCH LR FLAGS...: sets TRAIN_ARGS, the train.py flags every script
# shares (LLaVA-1.5's schedule: cosine, warmup 0.03, no weight decay, 2048 tokens, activation
# checkpointing) around the script's own FLAGS, with pruning on (TOKENS, METHOD, MODE).
holov_train_args() {
  local version="${1:?holov_train_args needs the conversation version}"
  local batch="${2:?holov_train_args needs the per-device batch size}"
  local lr="${3:?holov_train_args needs the learning rate}"
  shift 3
  # shellcheck disable=SC2034  # read by the sourcing script
  TRAIN_ARGS=(
    --model_name_or_path "$MODEL" --version "$version"
    --data_path "$DATA" --image_folder "$IMAGE_FOLDER"
    "$@"
    --holov_tokens "$TOKENS" --prune_method "$METHOD" --holov_mode "$MODE"
    --output_dir "$OUTPUT_DIR"
    --num_train_epochs "${EPOCHS:-1}" --per_device_train_batch_size "$batch" --per_device_eval_batch_size 4
    --gradient_accumulation_steps "${GRAD_ACCUM:-1}" --eval_strategy no
    --learning_rate "$lr" --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1
    --model_max_length 2048 --activation_checkpointing True --lazy_preprocess True --report_to "${REPORT_TO:-none}"
    "${HW_FLAGS[@]}"
  )
}

# holov_train_launch ARGS...: run llava/train/train_mem.py with ARGS: in one process without
# DeepSpeed (DEEPSPEED=none), in one CPU process under DeepSpeed (SMOKE=1), or through the
# deepspeed launcher on every GPU. SMOKE=1 exports DS_ACCELERATOR=cpu here, after any
# holov_smoke_models build, for the training process.
holov_train_launch() {
  if [[ "$SMOKE" == 1 ]]; then
    export DS_ACCELERATOR=cpu
  fi
  if [[ "$DEEPSPEED" == none ]]; then
    python -m llava.train.train_mem "$@"
  elif [[ "$SMOKE" == 1 ]]; then
    # One CPU process that DeepSpeed treats as rank 0 of 1 (no launcher needed).
    local port
    port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" \
      python -m llava.train.train_mem --deepspeed "$DEEPSPEED" "$@"
  else
    deepspeed llava/train/train_mem.py --deepspeed "$DEEPSPEED" "$@"
  fi
}
