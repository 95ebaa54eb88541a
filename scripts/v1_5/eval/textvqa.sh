#!/usr/bin/env bash
# TextVQA val (with LLaVA's OCR-token prompts): VQA soft accuracy.
# Usage: MODEL=... TOKENS=64 bash scripts/v1_5/eval/textvqa.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
holov_eval_init textvqa llava_textvqa_val_v051_ocr
D="$DATA_ROOT/textvqa"
holov_run_chunks model_vqa_loader --question-file "$D/llava_textvqa_val_v051_ocr.jsonl" --image-folder "$D/train_images"
holov_score textvqa --annotation-file "$D/TextVQA_0.5.1_val.json"
