"""The lazy LLaVA training set and its collator.

The json is LLaVA's: ``[{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}]``.
Samples are tokenized and their images loaded in ``__getitem__`` (LLaVA's ``lazy_preprocess``),
so a 665k-sample mix starts training at once. A text-only sample gets an all-zero image,
as in LLaVA, so that every batch stacks into one tensor; the model recognises one image
per text-only row and splices nothing for it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.mm_utils import load_image, process_images
from llava.conversation import SeparatorStyle, get_conv_template
from llava.train.preprocess import ASSISTANT_ROLES, _check_roles, place_image_token, preprocess_conversation, render

logger = logging.getLogger(__name__)

ASPECT_RATIOS = ("square", "pad", "anyres")
# LLaVA's length estimate for the sampler: words, plus a fixed cost for an image.
IMAGE_LENGTH_ESTIMATE = 128


MAX_LISTED = 10  # problems named in one error message


def load_samples(data_path: str, image_folder: Optional[str] = None, check_images: bool = True) -> List[Dict[str, Any]]:
    """Read and check every sample of a LLaVA json up front, before anything is trained.

    The file must be UTF-8 JSON holding a non-empty list; each sample an object with a
    non-empty ``conversations`` list of ``{"from", "value"}`` turns (string values,
    user/assistant alternating, at least one answer) and, if it has one, an ``image``
    path (a string) that exists under ``image_folder`` (only looked up, not opened). All
    bad samples are reported in one ``ValueError`` that names the file and their indices."""
    if not data_path or not os.path.isfile(data_path):
        raise ValueError(f"--data_path {data_path!r} is not a file")
    with open(data_path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"--data_path {data_path} is empty; it must hold a json list of samples")
    try:
        samples = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"--data_path {data_path} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"--data_path {data_path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
    if not isinstance(samples, list):
        raise ValueError(f"--data_path {data_path} must hold a json list of samples, not a {type(samples).__name__}")
    if not samples:
        raise ValueError(f"--data_path {data_path} holds an empty list: no samples to train on")
    problems = []
    for i, sample in enumerate(samples):
        problem = sample_problem(sample, image_folder if check_images else None, check_images)
        if problem:
            sid = sample.get("id") if isinstance(sample, dict) else None
            problems.append(f"sample {i}{f' (id {sid!r})' if sid is not None else ''} {problem}")
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ValueError(f"{data_path}: {len(problems)} of {len(samples)} samples are malformed: {listed}{more}")
    return samples


def sample_problem(sample: Any, image_folder: Optional[str], check_images: bool = True) -> Optional[str]:
    """What is wrong with one json sample (None when nothing is): cheap checks only."""
    if not isinstance(sample, dict):
        return f"is a {type(sample).__name__}, not an object"
    turns = sample.get("conversations")
    if not isinstance(turns, list):
        return f"has no 'conversations' list (got {_short(turns)})"
    if not turns:
        return "has an empty 'conversations' list"
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return f"turn {t} must be an object with 'from' and 'value', got {_short(turn)}"
        if not isinstance(turn["value"], str):
            return f"turn {t} has a {type(turn['value']).__name__} 'value' ({_short(turn['value'])}); it must be a string"
    has_image = "image" in sample
    try:
        checked = _check_roles(turns)
        place_image_token(checked, has_image, False)
    except ValueError as err:
        return str(err)
    if not any(turn["from"] in ASSISTANT_ROLES for turn in checked):
        return "has no assistant answer: nothing in it is supervised"
    if has_image:
        image = sample["image"]
        if not isinstance(image, str) or not image:
            return f"has 'image': {_short(image)}; it must be a non-empty file name (or leave the key out)"
        if check_images:
            path = os.path.join(image_folder or "", image)
            if not os.path.isfile(path):
                return f"has image {image!r}, which is not a file under --image_folder {image_folder!r} ({path})"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list, str, int, float, bool, type(None))) \
        else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def visual_tokens_per_image(model) -> int:
    """Sequence positions one image takes in the language model's input: the tower's
    patches, or K under a pre-LLM pruning setting (anyres: its base image only, so a
    lower bound)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = base.get_vision_tower() if hasattr(base, "get_vision_tower") else None
    if tower is None:
        return 1
    n = int(tower.num_patches)
    cfg = base.get_pruning() if hasattr(base, "get_pruning") else None
    if cfg is not None and not cfg.is_off and cfg.stage != "llm":
        n = min(n, cfg.resolve_keep(n))
    return max(1, n)


class LazySupervisedDataset(Dataset):
    """LLaVA samples -> {input_ids [T], labels [T], image [3, S, S] (or [crops, 3, S, S]), image_size}."""

    unsupervised: List[int] = []  # indices of the samples max_length leaves without a supervised token

    def __init__(self, data_path: str, tokenizer, image_processor, template: str, image_folder: Optional[str] = None,
                 image_aspect_ratio: str = "square", image_grid_pinpoints=None, mm_use_im_start_end: bool = False,
                 max_length: Optional[int] = None, samples: Optional[List[Dict[str, Any]]] = None,
                 image_seq_len: int = 1):
        """``samples``: the json already read by :func:`load_samples` (else it is read here).
        ``image_seq_len``: positions one image takes in the model's input sequence (see
        :func:`visual_tokens_per_image`), for the count of samples that ``max_length`` leaves
        without any supervised token."""
        if image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio={image_aspect_ratio!r} is not one of {ASPECT_RATIOS}")
        if image_aspect_ratio == "anyres" and not image_grid_pinpoints:
            raise ValueError("image_aspect_ratio='anyres' needs the model's image_grid_pinpoints")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length={max_length!r} must be an integer >= 1 (or None for no limit)")
        if isinstance(image_seq_len, bool) or not isinstance(image_seq_len, int) or image_seq_len < 1:
            raise ValueError(f"image_seq_len={image_seq_len!r} must be an integer >= 1")
        self.data_path = data_path
        self.samples = samples if samples is not None else load_samples(data_path, image_folder)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.image_folder = image_folder or ""
        self.mm_use_im_start_end = mm_use_im_start_end
        self.max_length = max_length
        self.image_seq_len = image_seq_len
        # process_images reads these two attributes from a model config.
        self._image_cfg = SimpleNamespace(image_aspect_ratio=image_aspect_ratio, image_grid_pinpoints=image_grid_pinpoints)
        if image_processor is None and any("image" in s for s in self.samples):
            raise ValueError(f"{data_path} has image samples but the model has no image processor (no vision tower)")
        if max_length is not None:
            self._check_supervision_survives()

    # ------------------------------------------------------------ truncation
    def first_answer_positions(self) -> List[int]:
        """Per sample: the position in the model's input sequence (each image counted as
        ``image_seq_len`` positions) of its first supervised token. Truncation to
        ``max_length`` leaves a sample with no supervised token when this is >= max_length.

        Only the prompt before the first answer is rendered and tokenized (in batches), with
        the tokenization ``preprocess_conversation`` uses."""
        plain = get_conv_template(self.template).sep_style == SeparatorStyle.PLAIN
        prefixes = []
        for i, sample in enumerate(self.samples):
            try:
                turns = place_image_token(_check_roles(sample["conversations"]), "image" in sample, self.mm_use_im_start_end)
                first = next(t for t, turn in enumerate(turns) if turn["from"] in ASSISTANT_ROLES)
                text, spans = render(turns if plain else turns[:first + 1], self.template)
            except ValueError as err:
                raise ValueError(f"{self.data_path}: sample {i} (id {sample.get('id', i)!r}): {err}") from err
            prefixes.append(text[:spans[0][0]])
        chunks = [p.split(DEFAULT_IMAGE_TOKEN) for p in prefixes]
        unique = list(dict.fromkeys(c for parts in chunks for c in parts))  # prompts repeat: tokenize each once
        bos = self.tokenizer.bos_token_id
        counts: Dict[str, Tuple[int, int]] = {}  # chunk -> (tokens, tokens without a leading BOS)
        batch = 4096
        for start in range(0, len(unique), batch):
            texts = unique[start:start + batch]
            encoded = self.tokenizer(texts, return_attention_mask=False, return_token_type_ids=False).input_ids
            for text, ids in zip(texts, encoded):
                counts[text] = (len(ids), len(ids) - (1 if bos is not None and ids[:1] == [bos] else 0))
        # as tokenizer_image_token: the first chunk whole, then per <image> one id (here
        # image_seq_len positions) and the next chunk without its BOS
        return [counts[parts[0]][0] + sum(self.image_seq_len + counts[c][1] for c in parts[1:]) for parts in chunks]

    def _check_supervision_survives(self) -> None:
        positions = self.first_answer_positions()
        lost = [i for i, pos in enumerate(positions) if pos >= self.max_length]
        if not lost:
            return
        how = (f"its first answer starts at sequence position >= {self.max_length}, images counted as "
               f"{self.image_seq_len} positions each")
        if len(lost) == len(positions):
            raise ValueError(
                f"all {len(lost)} samples of {self.data_path} lose every supervised token to --model_max_length "
                f"{self.max_length} (in each, {how}; the earliest first answer is at position {min(positions)}): "
                f"training would learn nothing (loss 0). Raise --model_max_length or shorten the samples")
        ids = [self.samples[i].get("id", i) for i in lost[:MAX_LISTED]]
        logger.warning("WARNING: %d of %d samples of %s lose every supervised token to --model_max_length %d "
                       "(%s); they add nothing to training. First of them: %s",
                       len(lost), len(positions), self.data_path, self.max_length, how, ids)
        self.unsupervised = lost

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
                                max_length: int, samples: Optional[List[Dict[str, Any]]] = None,
                                image_seq_len: int = 1) -> Dict[str, Any]:
    dataset = LazySupervisedDataset(
        data_args.data_path, tokenizer, image_processor, template, image_folder=data_args.image_folder,
        image_aspect_ratio=data_args.image_aspect_ratio, image_grid_pinpoints=getattr(model_config, "image_grid_pinpoints", None),
        mm_use_im_start_end=bool(getattr(model_config, "mm_use_im_start_end", False)), max_length=max_length,
        samples=samples, image_seq_len=image_seq_len)
    return {"train_dataset": dataset, "eval_dataset": None,
            "data_collator": DataCollatorForSupervisedDataset(tokenizer, max_length=max_length)}
