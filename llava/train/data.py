"""The lazy LLaVA training set and its collator.

The json is LLaVA's: ``[{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}]``.
Samples are tokenized and their images loaded in ``__getitem__`` (LLaVA's ``lazy_preprocess``),
so a 665k-sample mix starts training at once. A text-only sample gets an all-zero image,
as in LLaVA, so that every batch stacks into one tensor; the model recognises one image
per text-only row and splices nothing for it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from llava.constants import IGNORE_INDEX
from llava.mm_utils import load_image, process_images
from llava.train.preprocess import preprocess_conversation

ASPECT_RATIOS = ("square", "pad", "anyres")
# LLaVA's length estimate for the sampler: words, plus a fixed cost for an image.
IMAGE_LENGTH_ESTIMATE = 128


def load_samples(data_path: str) -> List[Dict[str, Any]]:
    """Read and sanity-check a LLaVA json (a list of samples, each with conversations)."""
    if not data_path or not os.path.isfile(data_path):
        raise ValueError(f"--data_path {data_path!r} is not a file")
    with open(data_path) as f:
        samples = json.load(f)
    if not isinstance(samples, list) or not samples:
        raise ValueError(f"{data_path} must hold a non-empty json list of samples")
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict) or not isinstance(sample.get("conversations"), list):
            raise ValueError(f"sample {i} of {data_path} has no 'conversations' list")
    return samples


class LazySupervisedDataset(Dataset):
    """LLaVA samples -> {input_ids [T], labels [T], image [3, S, S] (or [crops, 3, S, S]), image_size}."""

    def __init__(self, data_path: str, tokenizer, image_processor, template: str, image_folder: Optional[str] = None,
                 image_aspect_ratio: str = "square", image_grid_pinpoints=None, mm_use_im_start_end: bool = False,
                 max_length: Optional[int] = None):
        if image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio={image_aspect_ratio!r} is not one of {ASPECT_RATIOS}")
        if image_aspect_ratio == "anyres" and not image_grid_pinpoints:
            raise ValueError("image_aspect_ratio='anyres' needs the model's image_grid_pinpoints")
        self.samples = load_samples(data_path)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.image_folder = image_folder or ""
        self.mm_use_im_start_end = mm_use_im_start_end
        self.max_length = max_length
        # process_images reads these two attributes from a model config.
        self._image_cfg = SimpleNamespace(image_aspect_ratio=image_aspect_ratio, image_grid_pinpoints=image_grid_pinpoints)
        if image_processor is None and any("image" in s for s in self.samples):
            raise ValueError(f"{data_path} has image samples but the model has no image processor (no vision tower)")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> List[int]:
        """Approximate token count per sample (words), images counted as IMAGE_LENGTH_ESTIMATE."""
        return [self._words(s) + (IMAGE_LENGTH_ESTIMATE if "image" in s else 0) for s in self.samples]

    @property
    def modality_lengths(self) -> List[int]:
        """Word count per sample, positive for image samples and negative for text-only ones."""
        return [self._words(s) if "image" in s else -self._words(s) for s in self.samples]

    @staticmethod
    def _words(sample: Dict[str, Any]) -> int:
        return max(1, sum(len(turn["value"].split()) for turn in sample["conversations"]))

    def _crop_size(self):
        size = self.image_processor.crop_size
        return size["height"], size["width"]

    def _image(self, name: str):
        """(pixels [3, S, S] or [crops, 3, S, S] for anyres, (width, height) of the original)."""
        image = load_image(os.path.join(self.image_folder, name))
        pixels = process_images([image], self.image_processor, self._image_cfg)  # [1, ...] or a list of one
        return pixels[0], image.size

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = self.samples[index]
        has_image = "image" in sample
        out = preprocess_conversation(sample["conversations"], self.tokenizer, self.template, has_image,
                                      mm_use_im_start_end=self.mm_use_im_start_end, max_length=self.max_length,
                                      sample_id=str(sample.get("id", index)))
        if has_image:
            out["image"], out["image_size"] = self._image(sample["image"])
        elif self.image_processor is not None:
            height, width = self._crop_size()
            out["image"] = torch.zeros(3, height, width)  # LLaVA's dummy image for a text-only sample
            out["image_size"] = (width, height)
        return out


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads a batch: input_ids with the pad id, labels with IGNORE_INDEX; stacks the
    images when they share a shape (else a list, as anyres crops vary)."""
    tokenizer: Any
    max_length: Optional[int] = None

    def __call__(self, instances: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set one (LLaVA uses unk) before training")
        ids = [x["input_ids"][:self.max_length] if self.max_length else x["input_ids"] for x in instances]
        labels = [x["labels"][:len(i)] for x, i in zip(instances, ids)]
        lengths = torch.tensor([len(i) for i in ids])
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
        batch = {
            "input_ids": input_ids,
            "labels": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
            # from the lengths, not ids != pad: the pad id may also be a real token (unk)
            "attention_mask": torch.arange(input_ids.shape[1])[None, :] < lengths[:, None],  # [B, T]
        }
        if "image" in instances[0]:
            images = [x["image"] for x in instances]
            batch["images"] = torch.stack(images) if all(x.shape == images[0].shape for x in images) else images
            batch["image_sizes"] = [x["image_size"] for x in instances]
        return batch


def make_supervised_data_module(tokenizer, data_args, image_processor, template: str, model_config,
                                max_length: int) -> Dict[str, Any]:
    dataset = LazySupervisedDataset(
        data_args.data_path, tokenizer, image_processor, template, image_folder=data_args.image_folder,
        image_aspect_ratio=data_args.image_aspect_ratio, image_grid_pinpoints=getattr(model_config, "image_grid_pinpoints", None),
        mm_use_im_start_end=bool(getattr(model_config, "mm_use_im_start_end", False)), max_length=max_length)
    return {"train_dataset": dataset, "eval_dataset": None,
            "data_collator": DataCollatorForSupervisedDataset(tokenizer, max_length=max_length)}
