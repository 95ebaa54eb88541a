#!/usr/bin/env bash
# LoRA fine-tune of LLaVA-1.5 with visual-token pruning on. LLaVA-1.5's finetune_lora.sh
# hyper-parameters (LoRA r 128 / alpha 256, lr 2e-4, projector lr 2e-5, 16 x 8 GPUs, 1 epoch,
# cosine, warmup 0.03, bf16, ZeRO-3). Load the result with --model-base MODEL.
#
#   TOKENS=64 METHOD=holov bash scripts/v1_5/finetune_lora_holov.sh [extra train.py flags]
#   SMOKE=1 bash scripts/v1_5/finetune_lora_holov.sh      # CPU smoke run: tiny model, fixtures, 3 steps
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
# OUTPUT_DIR    [./checkpoints/llava-v1.5-7b-lora-$METHOD-$TOKENS]
# DEEPSPEED     ZeRO config, or "none" for a single process without DeepSpeed [./scripts/zero3.json]
# LORA_R, LORA_ALPHA, BATCH, GRAD_ACCUM, EPOCHS, LR, PROJECTOR_LR, REPORT_TO
#               [128, 256, 16, 1, 1, 2e-4, 2e-5, none]
# SMOKE=1       CPU run on llava.train.smoke's tiny model and playground/fixtures/train
#               (SMOKE_DIR [playground/tiny/smoke], MAX_STEPS [3]); DS_ACCELERATOR=cpu
set -euo pipefail
# shellcheck source=SCRIPTDIR/_train_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh"

holov_train_init ./scripts/zero3.json 50000
if [[ "$SMOKE" == 1 ]]; then
  OUTPUT_DIR="${OUTPUT_DIR:-$SMOKE_DIR/checkpoints/llava-v1.5-tiny-lora-$METHOD-$TOKENS}"
  LORA_R="${LORA_R:-8}"
  LORA_ALPHA="${LORA_ALPHA:-16}"
fi
holov_finetune_init
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-lora-$METHOD-$TOKENS}"

holov_train_args v1 "${BATCH:-16}" "${LR:-2e-4}" "${FINETUNE_FLAGS[@]}"
holov_train_launch \
  --lora_enable True --lora_r "${LORA_R:-128}" --lora_alpha "${LORA_ALPHA:-256}" --mm_projector_lr "${PROJECTOR_LR:-2e-5}" \
  "${TRAIN_ARGS[@]}" "$@"
