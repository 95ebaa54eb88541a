#!/usr/bin/env bash
# Full fine-tune of LLaVA-1.5 with visual-token pruning on, so the model adapts to seeing
# only TOKENS visual tokens. LLaVA-1.5's finetune.sh hyper-parameters (lr 2e-5, 16 x 8 GPUs,
# 1 epoch, cosine, warmup 0.03, bf16, ZeRO-3).
#
#   TOKENS=64 METHOD=holov bash scripts/v1_5/finetune_holov.sh [extra train.py flags]
#   SMOKE=1 bash scripts/v1_5/finetune_holov.sh      # CPU smoke run: tiny model, fixtures, 3 steps
#
# MODEL         start model: a LLaVA checkpoint [liuhaotian/llava-v1.5-7b], or a Vicuna
#               together with VISION_TOWER and PROJECTOR (LLaVA-1.5's own recipe)
# VISION_TOWER  CLIP tower for a Vicuna start [unset]
# PROJECTOR     mm_projector.bin from pretrain.sh for a Vicuna start [unset]
# DATA          LLaVA json [./playground/data/llava_v1_5_mix665k.json]
# IMAGE_FOLDER  [./playground/data]
# TOKENS        visual tokens kept per image [64]
# METHOD        pruning method (holov, cls_topk, random, ..., none) [holov]
# MODE          HoloV mode, faithful or improved [faithful]
# OUTPUT_DIR    [./checkpoints/llava-v1.5-7b-$METHOD-$TOKENS]
# DEEPSPEED     ZeRO config, or "none" for a single process without DeepSpeed [./scripts/zero3.json]
# BATCH, GRAD_ACCUM, EPOCHS, LR, REPORT_TO   [16, 1, 1, 2e-5, none]
# SMOKE=1       CPU run on llava.train.smoke's tiny model and playground/fixtures/train
#               (SMOKE_DIR [playground/tiny/smoke], MAX_STEPS [3]); DS_ACCELERATOR=cpu
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

SMOKE="${SMOKE:-0}"
TOKENS="${TOKENS:-64}"
METHOD="${METHOD:-holov}"
MODE="${MODE:-faithful}"
DEEPSPEED="${DEEPSPEED:-./scripts/zero3.json}"
hw_args=()
if [[ "$SMOKE" == 1 ]]; then
  SMOKE_DIR="${SMOKE_DIR:-$ROOT/playground/tiny/smoke}"
  if [[ -z "${MODEL:-}" ]]; then
    python -m llava.train.smoke "$SMOKE_DIR" >/dev/null  # tiny random models, built once
    MODEL="$SMOKE_DIR/llava-v1.5-tiny"
  fi
  DATA="${DATA:-$ROOT/playground/fixtures/train/conversations.json}"
  IMAGE_FOLDER="${IMAGE_FOLDER:-$ROOT/playground/fixtures/train/images}"
  OUTPUT_DIR="${OUTPUT_DIR:-$SMOKE_DIR/checkpoints/llava-v1.5-tiny-$METHOD-$TOKENS}"
  BATCH="${BATCH:-2}"
  export DS_ACCELERATOR=cpu
  hw_args=(--use_cpu True --bf16 False --max_steps "${MAX_STEPS:-3}" --dataloader_num_workers 0 --save_strategy no)
else
  hw_args=(--bf16 True --tf32 True --dataloader_num_workers 4 --save_strategy steps --save_steps 50000 --save_total_limit 1)
fi
MODEL="${MODEL:-liuhaotian/llava-v1.5-7b}"
DATA="${DATA:-./playground/data/llava_v1_5_mix665k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-$METHOD-$TOKENS}"

mm_args=()
if [[ -n "${VISION_TOWER:-}" ]]; then
  mm_args+=(--vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2
            --mm_use_im_start_end False --mm_use_im_patch_token False)
fi
if [[ -n "${PROJECTOR:-}" ]]; then
  mm_args+=(--pretrain_mm_mlp_adapter "$PROJECTOR")
fi

args=(
  --model_name_or_path "$MODEL" --version v1
  --data_path "$DATA" --image_folder "$IMAGE_FOLDER"
  "${mm_args[@]}"
  --image_aspect_ratio pad --group_by_modality_length True
  --holov_tokens "$TOKENS" --prune_method "$METHOD" --holov_mode "$MODE"
  --output_dir "$OUTPUT_DIR"
  --num_train_epochs "${EPOCHS:-1}" --per_device_train_batch_size "${BATCH:-16}" --per_device_eval_batch_size 4
  --gradient_accumulation_steps "${GRAD_ACCUM:-1}" --eval_strategy no
  --learning_rate "${LR:-2e-5}" --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1
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
