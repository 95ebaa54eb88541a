"""Draw which visual tokens a pruner kept.

    python -m holov_patches.visualize --model-path P --image-file F [--holov-tokens K] --out kept.png

Loads the model with the pruning setting (flags > HOLOV_PRUNING > saved config; HoloV
with K=64 when none is set), runs one prefill on the image, and draws the image as the
vision tower sees it with the patch grid: kept tokens clear, pruned tokens dimmed, and
for HoloV the crop borders (1-D raster runs in faithful mode, 2-D squares in improved).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from holov_patches.cli_args import add_pruning_args, pruning_config_from_args
from holov_patches.config import PruningConfig


def crop_ids(num_tokens: int, config: PruningConfig, grid) -> Optional[np.ndarray]:
    """Crop id of every token for HoloV (None for other methods)."""
    if config.method != "holov":
        return None
    from holov_patches._holov_crops import raster_chunks, square_crops

    crops = config.resolve_num_crops(num_tokens)
    table = raster_chunks(num_tokens, crops, torch.device("cpu")) if config.mode == "faithful" else \
        square_crops(grid, crops, torch.device("cpu"))
    ids = np.full(num_tokens, -1, dtype=np.int64)
    slots, valid = table.slot_index.numpy(), table.valid.numpy()
    rows = np.broadcast_to(np.arange(slots.shape[0])[:, None], slots.shape)
    ids[slots[valid]] = rows[valid]
    return ids


def draw_kept(image: Image.Image, kept_index: Sequence[int], grid, crops: Optional[np.ndarray] = None,
              dim: float = 0.25, cell_px: int = 20) -> Image.Image:
    """image (already square, as the tower sees it) with a rows x cols grid; pruned cells dimmed."""
    rows, cols = grid
    canvas = image.convert("RGB").resize((cols * cell_px, rows * cell_px))
    kept = np.zeros(rows * cols, dtype=bool)
    idx = np.asarray([i for i in kept_index if 0 <= i < rows * cols], dtype=np.int64)
    kept[idx] = True
    pixels = np.asarray(canvas, dtype=np.float32)
    mask = np.repeat(np.repeat(kept.reshape(rows, cols), cell_px, axis=0), cell_px, axis=1)
    pixels[~mask] *= dim
    out = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for r in range(rows + 1):
        draw.line([(0, r * cell_px), (cols * cell_px, r * cell_px)], fill=(90, 90, 90), width=1)
    for c in range(cols + 1):
        draw.line([(c * cell_px, 0), (c * cell_px, rows * cell_px)], fill=(90, 90, 90), width=1)
    if crops is not None:
        ids = crops.reshape(rows, cols)
        for r in range(rows):
            for c in range(cols):  # borders between different crops (a few hundred cells, drawing only)
                if c + 1 < cols and ids[r, c] != ids[r, c + 1]:
                    x = (c + 1) * cell_px
                    draw.line([(x, r * cell_px), (x, (r + 1) * cell_px)], fill=(255, 220, 0), width=3)
                if r + 1 < rows and ids[r, c] != ids[r + 1, c]:
                    y = (r + 1) * cell_px
                    draw.line([(c * cell_px, y), ((c + 1) * cell_px, y)], fill=(255, 220, 0), width=3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--question", default="Describe the image.")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="kept.png")
    add_pruning_args(p)
    args = p.parse_args(argv)

    from llava.conversation import get_conv_template
    from llava.mm_utils import expand2square, get_model_name_from_path, load_image, process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    try:
        image = load_image(args.image_file)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path), device=args.device,
        pruning=pruning_config_from_args(args))
    config = model.get_pruning()
    if config is None:
        config = PruningConfig()
        model.set_pruning(config)
        print(f"[holov] no pruning setting given: drawing {config.describe()}")
    conv = get_conv_template(args.conv_mode)
    conv.append_message(conv.roles[0], "<image>\n" + args.question)
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None].to(model.device)
    pixels = process_images([image], processor, model.config)
    with torch.no_grad():
        model(input_ids=ids, images=pixels, image_sizes=[image.size])
    record = model.last_pruning
    side = model.get_vision_tower().num_patches_per_side
    kept = record.kept_index[0][record.kept_index[0] >= 0]
    base = kept[kept < side * side].tolist()  # anyres: draw the base tile
    background = tuple(int(x * 255) for x in processor.image_mean)
    seen = expand2square(image, background) if getattr(model.config, "image_aspect_ratio", None) == "pad" else image
    picture = draw_kept(seen, base, (side, side), crop_ids(side * side, config, (side, side)))
    picture.save(args.out)
    print(f"[holov] kept {len(kept)} of {record.num_tokens[0]} visual tokens ({config.describe()}); "
          f"picture written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
