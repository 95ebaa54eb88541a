"""Draw which visual tokens a pruner kept.

    python -m llava.serve.visualize --model-path P --image-file F [--holov-tokens K] --out kept.png

Loads the model with the pruning setting (flags > HOLOV_PRUNING > saved config; HoloV
with K=64 when none is set), runs one prefill on the image, and draws the image as the
vision tower sees it with the patch grid: kept tokens clear, pruned tokens darkened, cells
that cover only padding hatched, and for HoloV the crop borders (1-D raster runs in
faithful mode, 2-D squares in improved). The title names the method, K of N, the mode,
the crops and any zero pads; a legend says what each mark means. For LLaVA-NeXT (anyres)
it draws two panels: the base tile and the unpadded high-res map.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from holov_patches.cli_args import add_pruning_args, pruning_config_from_args
from holov_patches.config import PruningConfig
from holov_patches.methods.holov import raster_chunks, square_crops
from llava.conversation import build_prompt
from llava.mm_utils import expand2square, get_model_name_from_path, load_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import LlavaArgumentParser, default_device


def crop_ids(num_tokens: int, config: PruningConfig, grid: Optional[Tuple[int, int]]) -> Optional[np.ndarray]:
    """Crop id of every token for HoloV (None for other methods): raster chunks in faithful
    mode (or crop_shape=raster), squares on ``grid`` otherwise."""
    if config.method != "holov":
        return None
    crops = config.resolve_num_crops(num_tokens)
    raster = config.mode == "faithful" or config.crop_shape == "raster"
    table = raster_chunks(num_tokens, crops, torch.device("cpu")) if raster else \
        square_crops(grid, crops, torch.device("cpu"))
    ids = np.full(num_tokens, -1, dtype=np.int64)
    slots, valid = table.slot_index.numpy(), table.valid.numpy()
    rows = np.broadcast_to(np.arange(slots.shape[0])[:, None], slots.shape)
    ids[slots[valid]] = rows[valid]
    return ids


@dataclass
class Panel:
    """One 2-D token map to draw: the picture under it, its (rows, cols), which tokens were
    kept, HoloV's crop id per token (or None) and which cells cover padding, not the image."""
    title: str
    image: Image.Image
    grid: Tuple[int, int]
    kept: np.ndarray                      # [rows * cols] bool
    crops: Optional[np.ndarray] = None    # [rows * cols] crop id
    padding: Optional[np.ndarray] = None  # [rows * cols] bool


def padding_cells(image_size: Tuple[int, int], side: int) -> np.ndarray:
    """[side * side] bool: the cells of expand2square's square that hold only padding."""
    width, height = image_size
    big = max(width, height)
    x0, y0 = (big - width) / 2, (big - height) / 2
    edges = np.arange(side + 1) * big / side
    cols = (edges[1:] <= x0) | (edges[:-1] >= x0 + width)     # [side] columns entirely outside the image
    rows = (edges[1:] <= y0) | (edges[:-1] >= y0 + height)
    return (rows[:, None] | cols[None, :]).reshape(-1)


def kept_figure(panels: Sequence[Panel], title: str, dim: float = 0.75) -> Figure:
    """One axes per panel: kept cells clear, pruned cells darkened, padding hatched, HoloV's
    crop borders in yellow; the title says method, K of N, mode and crops."""
    fig = Figure(figsize=(max(6.6, 4.2 * len(panels)), 5.0), layout="constrained")
    fig.suptitle(title, fontsize=10)
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        rows, cols = panel.grid
        ax.imshow(np.asarray(panel.image.convert("RGB")), extent=(0, cols, rows, 0), interpolation="nearest")
        shade = np.zeros((rows, cols, 4))
        shade[..., 3] = np.where(panel.kept.reshape(rows, cols), 0.0, dim)  # black, opaque where pruned
        ax.imshow(shade, extent=(0, cols, rows, 0), interpolation="nearest")
        if panel.padding is not None:
            for r, c in zip(*np.nonzero(panel.padding.reshape(rows, cols))):  # drawing only: a few hundred cells
                ax.add_patch(Rectangle((c, r), 1, 1, fill=False, hatch="///", edgecolor="0.6", linewidth=0))
        if panel.crops is not None:
            ids = panel.crops.reshape(rows, cols)
            for r, c in zip(*np.nonzero(ids[:, 1:] != ids[:, :-1])):
                ax.plot([c + 1, c + 1], [r, r + 1], color="gold", linewidth=2)
            for r, c in zip(*np.nonzero(ids[1:, :] != ids[:-1, :])):
                ax.plot([c, c + 1], [r + 1, r + 1], color="gold", linewidth=2)
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{panel.title}: {int(panel.kept.sum())} of {rows * cols} kept ({rows}x{cols})", fontsize=9)
    handles = [Patch(facecolor="white", edgecolor="0.3", label="kept token"),
               Patch(facecolor="0.25", edgecolor="0.3", label="pruned token")]
    if any(p.padding is not None and p.padding.any() for p in panels):
        handles.append(Patch(facecolor="white", hatch="///", edgecolor="0.6", label="padding (no image)"))
    if any(p.crops is not None for p in panels):
        handles.append(Line2D([], [], color="gold", linewidth=2, label="HoloV crop border"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def figure_title(config: PruningConfig, kept: int, num_tokens: int, zero_pads: int, parts: int = 1) -> str:
    title = f"{config.method}: kept {kept} of {num_tokens} visual tokens"
    if config.method == "holov":
        title += f", mode {config.mode}"
        if parts == 1 or config.mode == "faithful":
            title += f", P={config.resolve_num_crops(num_tokens)} crops"
    if zero_pads:
        title += f" (+ {zero_pads} zero pads)"
    return title


def draw_record(record, model, processor, image: Image.Image, config: PruningConfig, out: str) -> str:
    """Draw the first image of ``record`` (``model.last_pruning``) into ``out``; returns the
    line to print."""
    side = model.get_vision_tower().num_patches_per_side
    index = record.kept_index[0]
    real = index[index >= 0].cpu().numpy()
    zero_pads = int((index < 0).sum())
    padded = getattr(model.config, "image_aspect_ratio", None) == "pad"
    background = tuple(int(x * 255) for x in processor.image_mean)
    base_image = expand2square(image, background) if padded else image
    parts = record.parts[0] or [record.grids[0] or (side, side)]  # LLaVA-NeXT: base tile, then unpadded high-res map
    total = record.num_tokens[0]
    # Faithful HoloV cuts the whole token list into raster chunks; otherwise each part has its own crops and budget.
    whole_list_crops = crop_ids(total, config, None) if config.mode == "faithful" else None
    budgets = config.split_budget([r * c for r, c in parts]) if len(parts) > 1 else [config.resolve_keep(total)]
    panels, start = [], 0
    for number, ((rows, cols), budget) in enumerate(zip(parts, budgets)):
        size = rows * cols
        kept = np.zeros(size, dtype=bool)
        kept[real[(real >= start) & (real < start + size)] - start] = True
        if whole_list_crops is not None:
            crops = whole_list_crops[start:start + size]
        else:
            crops = crop_ids(size, config.with_keep(budget), (rows, cols)) if budget else None
        name = "image" if len(parts) == 1 else ("base tile" if number == 0 else "high-res map (unpadded)")
        panels.append(Panel(name, base_image if number == 0 else image, (rows, cols), kept, crops,
                            padding_cells(image.size, side) if padded and number == 0 else None))
        start += size
    fig = kept_figure(panels, figure_title(config, len(real), total, zero_pads, len(parts)))
    fig.savefig(out, dpi=110)
    return (f"[holov] kept {len(real)} of {record.num_tokens[0]} visual tokens ({config.describe()}); "
            f"picture written to {out}")


def main(argv=None) -> int:
    p = LlavaArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--question", default="Describe the image.")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--device", default=default_device())
    p.add_argument("--out", default="kept.png")
    add_pruning_args(p)
    args = p.parse_args(argv)
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
    prompt = build_prompt(args.question, args.conv_mode,
                          mm_use_im_start_end=getattr(model.config, "mm_use_im_start_end", False))
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(model.device)
    pixels = process_images([image], processor, model.config)
    with torch.no_grad():
        model(input_ids=ids, images=pixels, image_sizes=[image.size])
    print(draw_record(model.last_pruning, model, processor, image, config, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
