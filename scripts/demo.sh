#!/usr/bin/env bash
# The main job: ask one question about an image with HoloV pruning on, and draw what was kept.
#
#   bash scripts/demo.sh                                   # tiny random checkpoint, CPU, no downloads
#   MODEL=liuhaotian/llava-v1.5-7b bash scripts/demo.sh    # the real model (needs its weights)
#
# Variables: MODEL, IMAGE, QUESTION, TOKENS (visual tokens kept, default 64; 576 = off),
# METHOD (default holov), MODE (faithful|improved), DEVICE (cuda|cpu), MAX_NEW_TOKENS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

if [ -z "${MODEL:-}" ]; then
  MODEL=playground/tiny/llava-v1.5-tiny
  python -m llava.model.tiny "$MODEL"
  echo "NOTE: using a tiny checkpoint with RANDOM weights: its answer is gibberish by design."
  echo "      Set MODEL=liuhaotian/llava-v1.5-7b (or a local path) for real answers."
fi
IMAGE="${IMAGE:-playground/examples/shapes.png}"
QUESTION="${QUESTION:-What shapes are in the image and what colours are they?}"
TOKENS="${TOKENS:-64}"
METHOD="${METHOD:-holov}"
MODE="${MODE:-faithful}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-48}"
if [ -z "${DEVICE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then DEVICE=cuda; else DEVICE=cpu; fi
fi
PRUNE_FLAGS=(--holov-tokens "$TOKENS" --prune-method "$METHOD" --holov-mode "$MODE")
if [ "$TOKENS" = "576" ]; then PRUNE_FLAGS=(--prune-method none); fi

OUT="${OUT:-playground/demo_kept_tokens.png}"
PICTURE_FLAGS=()
if [ "$TOKENS" != "576" ]; then PICTURE_FLAGS=(--kept-picture "$OUT"); fi
# One process, the model loaded once: the answer, then the picture of the kept tokens.
echo "$QUESTION" | python -m llava.serve.cli --model-path "$MODEL" --image-file "$IMAGE" --device "$DEVICE" \
  --temperature 0 --max-new-tokens "$MAX_NEW_TOKENS" "${PRUNE_FLAGS[@]}" "${PICTURE_FLAGS[@]}"
