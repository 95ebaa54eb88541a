"""Image and prompt helpers with LLaVA's public names: process_images, expand2square,
the anyres helpers, tokenizer_image_token, get_model_name_from_path,
KeywordsStoppingCriteria, load_image."""
from __future__ import annotations

import ast
import base64
import math
import os
from io import BytesIO
from typing import List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import IMAGE_TOKEN_INDEX


# ---------------------------------------------------------------- images
def load_image(image_file: str) -> Image.Image:
    """Open a local path (or http(s) URL) as RGB; a missing or non-image file raises ValueError."""
    if image_file.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(image_file) as resp:  # noqa: S310 (user-given URL, as LLaVA's CLI)
            data = BytesIO(resp.read())
        return _open_rgb(data, image_file)
    if not os.path.isfile(image_file):
        raise ValueError(f"image file {image_file!r} does not exist")
    return _open_rgb(image_file, image_file)


def load_image_from_base64(image: str) -> Image.Image:
    return _open_rgb(BytesIO(base64.b64decode(image)), "<base64 image>")


def _open_rgb(source, name: str) -> Image.Image:
    try:
        with Image.open(source) as img:
            # CMYK, grayscale, palette and RGBA images all become 3-channel RGB.
            return img.convert("RGB")
    except UnidentifiedImageError as err:
        raise ValueError(f"{name!r} is not an image PIL can read") from err


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad the shorter side symmetrically so the image becomes square (LLaVA-1.5 'pad')."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def select_best_resolution(original_size: Tuple[int, int], possible_resolutions: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The (width, height) in ``possible_resolutions`` that keeps the most of the image's
    resolution after a fit-inside resize, then wastes the least area."""
    orig_w, orig_h = original_size
    best, best_effective, best_waste = None, -1, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / orig_w, height / orig_h)
        down_w, down_h = int(orig_w * scale), int(orig_h * scale)
        effective = min(down_w * down_h, orig_w * orig_h)
        waste = width * height - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (width, height), effective, waste
    return best


def resize_and_pad_image(image: Image.Image, target_resolution: Tuple[int, int]) -> Image.Image:
    """Fit inside ``target_resolution`` keeping the aspect ratio, centre on black."""
    orig_w, orig_h = image.size
    target_w, target_h = target_resolution
    scale_w, scale_h = target_w / orig_w, target_h / orig_h
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(orig_h * scale_w), target_h)
    else:
        new_h, new_w = target_h, min(math.ceil(orig_w * scale_h), target_w)
    resized = image.resize((new_w, new_h))
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> List[Image.Image]:
    """Raster-order square tiles of side ``patch_size``."""
    width, height = image.size
    return [image.crop((x, y, x + patch_size, y + patch_size))
            for y in range(0, height, patch_size) for x in range(0, width, patch_size)]


def _parse_pinpoints(grid_pinpoints) -> List[Tuple[int, int]]:
    points = ast.literal_eval(grid_pinpoints) if isinstance(grid_pinpoints, str) else grid_pinpoints
    if not points:
        raise ValueError(f"image_grid_pinpoints={grid_pinpoints!r} must be a non-empty list of [width, height]")
    return [tuple(p) for p in points]


def get_anyres_image_grid_shape(image_size: Tuple[int, int], grid_pinpoints, patch_size: int) -> Tuple[int, int]:
    """(columns, rows) of high-resolution tiles that anyres makes for an image of (width, height)."""
    width, height = select_best_resolution(image_size, _parse_pinpoints(grid_pinpoints))
    return width // patch_size, height // patch_size


def process_anyres_image(image: Image.Image, processor, grid_pinpoints) -> torch.Tensor:
    """[1 + tiles, 3, S, S]: the whole image resized to S x S, then the raster tiles."""
    best = select_best_resolution(image.size, _parse_pinpoints(grid_pinpoints))
    padded = resize_and_pad_image(image, best)
    side = processor.crop_size["height"]
    tiles = divide_to_patches(padded, side)
    base = image.resize((processor.size["shortest_edge"],) * 2)
    crops = [base] + tiles
    return torch.stack([processor.preprocess(c, return_tensors="pt")["pixel_values"][0] for c in crops], dim=0)


def process_images(images: Sequence[Image.Image], image_processor, model_cfg) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Preprocess like LLaVA: 'pad' (expand to square with the mean colour), 'anyres', or
    the processor's own resize + centre crop. Stacks when every result has one shape."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        out = [image_processor.preprocess(expand2square(img, background), return_tensors="pt")["pixel_values"][0]
               for img in images]
    elif aspect == "anyres":
        out = [process_anyres_image(img, image_processor, model_cfg.image_grid_pinpoints) for img in images]
    else:
        return image_processor(list(images), return_tensors="pt")["pixel_values"]
    if all(x.shape == out[0].shape for x in out):
        return torch.stack(out, dim=0)
    return out


# ---------------------------------------------------------------- prompts
def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenize ``prompt`` with every ``<image>`` replaced by ``image_token_index``.

    transformers 5.x tokenizers add BOS to every call, so each chunk after the first
    loses its leading BOS: the result starts with one BOS and has none inside."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    bos = tokenizer.bos_token_id
    input_ids: List[int] = list(chunks[0])
    for chunk in chunks[1:]:
        input_ids.append(image_token_index)
        input_ids.extend(chunk[1:] if bos is not None and chunk[:1] == [bos] else chunk)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors={return_tensors!r}; accepted: None or 'pt'")


def get_model_name_from_path(model_path: str) -> str:
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-"):
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a sequence once its generated text ends with one of ``keywords`` (e.g. ``</s>``).

    Returns one bool per sequence (transformers 5.x contract). ``input_ids`` is accepted
    for compatibility with LLaVA's signature; our ``generate`` yields new tokens only, so
    every position of ``output_ids`` is generated text."""

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: Optional[torch.Tensor] = None):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword, add_special_tokens=False).input_ids
            if ids:
                self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(k) for k in self.keyword_ids), default=1)

    def __call__(self, output_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        done = torch.zeros(output_ids.shape[0], dtype=torch.bool, device=output_ids.device)
        for row in range(output_ids.shape[0]):
            ids = output_ids[row]
            if any(ids.shape[0] >= len(k) and torch.equal(ids[-len(k):].cpu(), k) for k in self.keyword_ids):
                done[row] = True
                continue
            tail = self.tokenizer.decode(ids[-(self.max_keyword_len + 3):], skip_special_tokens=False)
            done[row] = any(tail.endswith(k) or k in tail for k in self.keywords)
        return done
