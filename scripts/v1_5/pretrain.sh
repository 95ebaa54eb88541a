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
# shellcheck source=SCRIPTDIR/_train_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh"

holov_train_init ./scripts/zero2.json 24000
if [[ "$SMOKE" == 1 ]]; then
  if [[ -z "${MODEL:-}" || -z "${VISION_TOWER:-}" ]]; then
    holov_smoke_models
  fi
  MODEL="${MODEL:-$SMOKE_DIR/llama-tiny}"
  VISION_TOWER="${VISION_TOWER:-$SMOKE_DIR/llava-v1.5-tiny/clip-vit-tiny-patch14-336}"
  DATA="${DATA:-$ROOT/playground/fixtures/train/captions.json}"
  OUTPUT_DIR="${OUTPUT_DIR:-$SMOKE_DIR/checkpoints/llava-v1.5-tiny-pretrain-$METHOD-$TOKENS}"
fi
MODEL="${MODEL:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
DATA="${DATA:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain-$METHOD-$TOKENS}"

holov_train_args plain "${BATCH:-32}" "${LR:-1e-3}" \
  --vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True \
  --mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False
holov_train_launch "${TRAIN_ARGS[@]}" "$@"
