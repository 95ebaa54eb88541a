#!/usr/bin/env bash
# Pretrain the projector (LLaVA-1.5 stage 1: captions, only the projector trains) with
# visual-token pruning on. LLaVA-1.5's pretrain.sh hyper-parameters (lr 1e-3, 32 x 8 GPUs,
# 1 epoch, cosine, warmup 0.03, bf16, ZeRO-2). Writes OUTPUT_DIR/mm_projector.bin, which
# finetune_holov.sh takes as PROJECTOR (with a Vicuna MODEL and VISION_TOWER).
#
#   TOKENS=64 METHOD=holov bash scripts/v1_5/pretrain.sh [extra train.py flags]
#   SMOKE=1 bash scripts/v1_5/pretrain.sh      # CPU smoke run: tiny LLaMA + tower, fixtures, 3 steps
#
# MODEL         plain language model [lmsys/vicuna-7b-v1.5]
# VISION_TOWER  [openai/clip-vit-large-patch14-336]
# DATA          LLaVA json of captions [./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json]
# IMAGE_FOLDER  [./playground/data/LLaVA-Pretrain/images]
# TOKENS        visual tokens kept per image [64]
# METHOD        pruning method (holov, cls_topk, random, ..., none) [holov]
# MODE          HoloV mode, faithful or improved [faithful]
# OUTPUT_DIR    [./checkpoints/llava-v1.5-7b-pretrain-$METHOD-$TOKENS]
# DEEPSPEED     ZeRO config, or "none" for a single process without DeepSpeed [./scripts/zero2.json]
# BATCH, GRAD_ACCUM, EPOCHS, LR, REPORT_TO   [32, 1, 1, 1e-3, none]
# SMOKE=1       CPU run on llava.train.smoke's tiny LLaMA and tower and playground/fixtures/train
#               (SMOKE_DIR [playground/tiny/smoke], MAX_STEPS [3]); DS_ACCELERATOR=cpu
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

SMOKE="${SMOKE:-0}"
TOKENS="${TOKENS:-64}"
METHOD="${METHOD:-holov}"
MODE="${MODE:-faithful}"
DEEPSPEED="${DEEPSPEED:-./scripts/zero2.json}"
hw_args=()
if [[ "$SMOKE" == 1 ]]; then
  SMOKE_DIR="${SMOKE_DIR:-$ROOT/playground/tiny/smoke}"
  if [[ -z "${MODEL:-}" || -z "${VISION_TOWER:-}" ]]; then
    python -m llava.train.smoke "$SMOKE_DIR" >/dev/null  # tiny random models, built once
  fi
  MODEL="${MODEL:-$SMOKE_DIR/llama-tiny}"
  VISION_TOWER="${VISION_TOWER:-$SMOKE_DIR/llava-v1.5-tiny/clip-vit-tiny-patch14-336}"
  DATA="${DATA:-$ROOT/playground/fixtures/train/captions.json}"
  IMAGE_FOLDER="${IMAGE_FOLDER:-$ROOT/playground/fixtures/train/images}"
  OUTPUT_DIR="${OUTPUT_DIR:-$SMOKE_DIR/checkpoints/llava-v1.5-tiny-pretrain-$METHOD-$TOKENS}"
  BATCH="${BATCH:-2}"
  export DS_ACCELERATOR=cpu
  hw_args=(--use_cpu True --bf16 False --max_steps "${MAX_STEPS:-3}" --dataloader_num_workers 0 --save_strategy no)
else
  hw_args=(--bf16 True --tf32 True --dataloader_num_workers 4 --save_strategy steps --save_steps 24000 --save_total_limit 1)
fi
MODEL="${MODEL:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
DATA="${DATA:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain-$METHOD-$TOKENS}"

args=(
  --model_name_or_path "$MODEL" --version plain
  --data_path "$DATA" --image_folder "$IMAGE_FOLDER"
  --vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True
  --mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False
  --holov_tokens "$TOKENS" --prune_method "$METHOD" --holov_mode "$MODE"
  --output_dir "$OUTPUT_DIR"
  --num_train_epochs "${EPOCHS:-1}" --per_device_train_batch_size "${BATCH:-32}" --per_device_eval_batch_size 4
  --gradient_accumulation_steps "${GRAD_ACCUM:-1}" --eval_strategy no
  --learning_rate "${LR:-1e-3}" --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1
  --model_max_length 2048 --activation_checkpointing True --lazy_preprocess True --report_to "${REPORT_TO:-none}"
  "${hw_args[@]}"
)

if [[ "$DEEPSPEED" == none ]]; then
  python -m llava.train.train_mem "${args[@]}" "$@"
elif [[ "$SMOKE" == 1 ]]; then
  # One CPU process that DeepSpeed treats as rank 0 of 1 (no launcher needed).
  port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" \
    python -m llava.train.train_mem --deepspeed "$DEEPSPEED" "${args[@]}" "$@"
else
  deepspeed llava/train/train_mem.py --deepspeed "$DEEPSPEED" "${args[@]}" "$@"
fi
