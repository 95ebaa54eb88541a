"""Prompt, pixel and batching helpers shared by the tests of our llava package."""
from __future__ import annotations

import torch
from PIL import Image

from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token


def prompt_ids(tok, text="What is in the image?", n_images=1, mode="vicuna_v1") -> torch.Tensor:
    """[T] ids of a one-turn prompt with n_images <image> tags before the text."""
    conv = get_conv_template(mode)
    conv.append_message(conv.roles[0], "<image>\n" * n_images + text)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tok, return_tensors="pt")


def random_pixels(proc, cfg, n, seed=0) -> torch.Tensor:
    """n random images of different sizes, preprocessed for the model."""
    g = torch.Generator().manual_seed(seed)
    imgs = [Image.fromarray((torch.rand(40 + 8 * i, 56, 3, generator=g) * 255).byte().numpy()) for i in range(n)]
    return process_images(imgs, proc, cfg)


def right_padded(rows, pad_id=0):
    """(ids [B, T], mask [B, T]) of right-padded rows, as lmms-eval builds them."""
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, :len(row)] = True
    return ids, mask


def assert_batched_generate_matches_single(model, rows, pixels, new_tokens=4):
    """Greedy generate of a padded batch equals generating each row alone."""
    single = [model.generate(row[None], images=pixels[i:i + 1], do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=0) for i, row in enumerate(rows)]
    ids, mask = right_padded(rows)
    batch = model.generate(ids, attention_mask=mask, images=pixels, do_sample=False, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0)
    assert torch.equal(batch, torch.cat(single, dim=0))


def load_deep_llava(folder: str, layers: int, seed: int):
    """(tokenizer, model, image_processor) of a tiny random LLaVA-1.5 with ``layers`` LLM
    layers, built in ``folder`` and loaded on CPU (in-LLM pruning needs layers after K)."""
    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import build_tiny_llava

    path = build_tiny_llava(folder, layers=layers, seed=seed)
    tok, model, proc, _ = load_pretrained_model(path, None, folder.rstrip("/").split("/")[-1], device="cpu")
    return tok, model, proc


def noise_pixels(proc, cfg, n: int, seed: int) -> torch.Tensor:
    """n uniform-noise 300x200 images (seeded), preprocessed for the model."""
    gen = torch.Generator().manual_seed(seed)
    images = [Image.fromarray((torch.rand(200, 300, 3, generator=gen) * 255).byte().numpy()) for _ in range(n)]
    return process_images(images, proc, cfg)
