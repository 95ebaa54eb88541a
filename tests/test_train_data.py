"""The lazy training set, its collator and the modality-grouped sampler, on the fixtures."""
from __future__ import annotations

import json
import os

import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset
from llava.train.sampler import modality_length_grouped_indices

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "playground", "fixtures", "train")
DATA = os.path.join(FIXTURES, "conversations.json")
IMAGES = os.path.join(FIXTURES, "images")


@pytest.fixture(scope="module")
def parts(tiny_llava_path):
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava.model.tiny import TOWER_DIR

    return AutoTokenizer.from_pretrained(tiny_llava_path), CLIPImageProcessor.from_pretrained(os.path.join(tiny_llava_path, TOWER_DIR))


@pytest.fixture(scope="module")
def dataset(parts):
    tokenizer, processor = parts
    return LazySupervisedDataset(DATA, tokenizer, processor, "v1", image_folder=IMAGES, image_aspect_ratio="pad")


def test_fixture_files_are_what_the_generator_writes(tmp_path):
    import runpy

    runpy.run_path(os.path.join(FIXTURES, "make_fixtures.py"), run_name="not_main")["main"](str(tmp_path))
    for name in ("conversations.json", "captions.json"):
        with open(os.path.join(FIXTURES, name)) as a, open(tmp_path / name) as b:
            assert json.load(a) == json.load(b)
    assert sorted(os.listdir(IMAGES)) == sorted(os.listdir(tmp_path / "images"))
    from PIL import Image

    for name in os.listdir(IMAGES):
        assert Image.open(os.path.join(IMAGES, name)).tobytes() == Image.open(tmp_path / "images" / name).tobytes()


def test_image_and_text_only_samples(dataset, parts):
    samples = json.load(open(DATA))
    kinds = ["image" in s for s in samples]
    assert any(kinds) and not all(kinds)
    crop = parts[1].crop_size["height"]
    for i, sample in enumerate(samples):
        item = dataset[i]
        assert item["input_ids"].shape == item["labels"].shape
        assert (item["labels"] != IGNORE_INDEX).any()
        assert item["image"].shape == (3, crop, crop)
        if "image" in sample:
            assert item["image"].abs().sum() > 0
        else:
            assert torch.count_nonzero(item["image"]) == 0  # LLaVA's dummy image


def test_pad_aspect_ratio_fills_with_the_mean_colour(dataset):
    # red_square.png is 96 x 72 (wider than tall): 'pad' adds rows of the mean colour above
    # and below, which normalise to ~0; the centre holds the red square.
    item = dataset[0]
    assert item["image_size"] == (96, 72)
    image = item["image"]  # [3, S, S]
    assert image[:, :8].abs().max() < 0.05
    assert image[0, image.shape[1] // 2, image.shape[2] // 2] > 1.0  # red channel, normalised


def test_collator_pads_right_and_stacks(dataset, parts):
    tokenizer = parts[0]
    items = [dataset[i] for i in range(len(dataset))]
    batch = DataCollatorForSupervisedDataset(tokenizer)(items)
    lengths = [len(x["input_ids"]) for x in items]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (len(items), max(lengths))
    assert batch["images"].shape[0] == len(items)
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == n and batch["attention_mask"][row, :n].all()
        assert torch.equal(batch["input_ids"][row, :n], items[row]["input_ids"])
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    short = DataCollatorForSupervisedDataset(tokenizer, max_length=20)(items)
    assert short["input_ids"].shape[1] == 20


def test_modality_lengths_sign(dataset):
    samples = json.load(open(DATA))
    assert [m > 0 for m in dataset.modality_lengths] == ["image" in s for s in samples]
    assert all(a >= abs(m) for a, m in zip(dataset.lengths, dataset.modality_lengths))


def test_modality_grouped_batches_do_not_mix():
    gen = torch.Generator().manual_seed(0)
    lengths = [5, -3, 8, -9, 2, -4, 7, 1, -6, 3, -2]  # 7 image samples, 4 text-only
    batch, world = 2, 1
    order = modality_length_grouped_indices(lengths, batch, world, generator=gen)
    assert sorted(order) == list(range(len(lengths)))
    megabatches = [order[i:i + batch * world] for i in range(0, len(order), batch * world)]
    mixed = [mb for mb in megabatches if len({lengths[i] > 0 for i in mb}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] == megabatches[-1])  # only the leftover batch mixes
    for mb in megabatches[:-1]:
        sizes = [abs(lengths[i]) for i in mb]
        assert sizes == sorted(sizes, reverse=True)
    other = modality_length_grouped_indices(lengths, batch, world, generator=torch.Generator().manual_seed(1))
    assert other != order  # shuffled
    with pytest.raises(ValueError, match="batch_size=0"):
        modality_length_grouped_indices(lengths, 0, 1)
    with pytest.raises(ValueError, match="modality length of 0"):
        modality_length_grouped_indices([1, 0], 1, 1)


def test_bad_dataset_arguments(parts, tmp_path):
    tokenizer, processor = parts
    with pytest.raises(ValueError, match="image_aspect_ratio='wide'"):
        LazySupervisedDataset(DATA, tokenizer, processor, "v1", image_aspect_ratio="wide")
    with pytest.raises(ValueError, match="is not a file"):
        LazySupervisedDataset(str(tmp_path / "missing.json"), tokenizer, processor, "v1")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1}]))
    with pytest.raises(ValueError, match="no 'conversations'"):
        LazySupervisedDataset(str(bad), tokenizer, processor, "v1")
    missing_image = tmp_path / "img.json"
    missing_image.write_text(json.dumps([{"id": 1, "image": "nope.png", "conversations": [
        {"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello."}]}]))
    with pytest.raises(ValueError):
        LazySupervisedDataset(str(missing_image), tokenizer, processor, "v1", image_folder=str(tmp_path))[0]
