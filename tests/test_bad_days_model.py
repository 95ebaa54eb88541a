"""Bad input at the model and pruner level: a clear error naming the value, or a correct
result; never a silent cut, a zeroed image or a default 7B model."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from holov_patches import PruningConfig, prune_visual_tokens
from llava.mm_utils import process_images
from llava.model.builder import check_checkpoint_source, load_pretrained_model
from llava.model.llava_arch import unpad_image
from llava_helpers import prompt_ids


# ---------------------------------------------------------------- pruner inputs (item 4)
@pytest.mark.parametrize("mode", ["faithful", "improved"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_token_is_refused_not_zeroed(mode, bad):
    tokens, attn = torch.randn(1, 576, 8), torch.rand(1, 576)
    tokens[0, 7, 3] = bad
    with pytest.raises(ValueError, match="tokens hold 1 NaN/inf value"):
        prune_visual_tokens(tokens, attn, PruningConfig(keep=64, mode=mode))


@pytest.mark.parametrize("alpha", [1e300, 1e7, -1.0])
def test_alpha_outside_its_range_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha=.* must be a finite number in \[0, 1e\+06\]"):
        PruningConfig(alpha=alpha)


def test_the_largest_alpha_still_gives_finite_scores_and_k_real_tokens():
    tokens, attn = torch.randn(2, 576, 16), torch.rand(2, 576)
    kept, index = prune_visual_tokens(tokens, attn, PruningConfig(keep=64, mode="improved", alpha=1e6))
    assert torch.isfinite(kept).all() and (index >= 0).all() and index.shape == (2, 64)


# ---------------------------------------------------------------- narrow images (item 2)
@pytest.mark.parametrize("size", [(1, 4000), (2, 4000), (3, 2000), (4000, 1), (2000, 3)])
def test_unpad_keeps_at_least_one_row_and_column(size):
    # A 2x2 grid of 24x24 tiles, as anyres lays out a tall or wide image.
    out = unpad_image(torch.zeros(5, 48, 48), size)
    assert out.shape[0] == 5 and out.shape[1] >= 1 and out.shape[2] >= 1


def test_unpad_is_unchanged_where_the_original_is_well_defined():
    # 500 x 300 on a 48 x 48 map: new_h = int(300 * 48 / 500) = 28, pad = 10 -> rows 10..38
    assert unpad_image(torch.zeros(1, 48, 48), (500, 300)).shape == (1, 28, 48)
    # 300 x 700: new_w = int(300 * 48 / 700) = 20, pad = 14 -> columns 14..34
    assert unpad_image(torch.zeros(1, 48, 48), (300, 700)).shape == (1, 48, 20)


@pytest.fixture()
def next_model(tiny_next_llava):
    yield tiny_next_llava
    tiny_next_llava[1].set_pruning(None)


@torch.no_grad()
@pytest.mark.parametrize("setting", [None, PruningConfig(ratio=0.889), PruningConfig(ratio=0.889, mode="improved"),
                                     PruningConfig(method="cls_topk", keep=64)])
@pytest.mark.parametrize("size", [(1, 4000), (3, 2000)])
def test_narrow_images_run_through_llava_next(next_model, setting, size):
    tok, model, proc = next_model
    model.set_pruning(setting)
    image = Image.new("RGB", size, (120, 30, 200))
    pixels = process_images([image], proc, model.config)
    out = model(input_ids=prompt_ids(tok)[None], images=pixels, image_sizes=[image.size])
    assert torch.isfinite(out.logits).all()


# ---------------------------------------------------------------- prompt length (item 5)
@torch.no_grad()
def test_an_over_long_prompt_is_an_error_naming_both_lengths(tiny_llava):
    tok, model, proc, _ = tiny_llava
    model.set_pruning(None)
    limit = model.config.tokenizer_model_max_length
    model.config.tokenizer_model_max_length = 600
    try:
        ids = prompt_ids(tok, "word " * 40)[None]  # 576 visual + ~50 text tokens > 600
        pixels = process_images([Image.new("RGB", (64, 64))], proc, model.config)
        with pytest.raises(ValueError, match=r"the prompt is \d+ tokens long .* tokenizer_model_max_length=600"):
            model.generate(ids, images=pixels, max_new_tokens=2)
        with pytest.raises(ValueError, match="tokenizer_model_max_length=600"):
            model.generate(torch.ones(1, 700, dtype=torch.long), max_new_tokens=2)  # text only
        # pruned to 64 visual tokens the same question fits
        model.set_pruning(PruningConfig(keep=64))
        assert model.generate(ids, images=pixels, max_new_tokens=2, do_sample=False).shape == (1, 2)
    finally:
        model.config.tokenizer_model_max_length = limit
        model.set_pruning(None)


# ---------------------------------------------------------------- checkpoint folders (items 11-13)
def test_a_folder_without_config_json_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"config.json not found in {tmp_path}"):
        load_pretrained_model(str(tmp_path), None, "llava-v1.5-7b", device="cpu")


def test_a_missing_local_path_is_named_not_read_as_a_hub_id(tmp_path):
    missing = str(tmp_path / "checkpoints" / "llava-v1.5-7b")
    with pytest.raises(ValueError, match=f"--model-path {missing} does not exist"):
        load_pretrained_model(missing, None, "llava-v1.5-7b", device="cpu")
    with pytest.raises(ValueError, match="--model-base ./nope does not exist"):
        check_checkpoint_source("liuhaotian/llava-v1.5-7b", "./nope")  # a hub id passes; the base does not


def test_a_lora_checkpoint_without_base_says_so(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a LoRA checkpoint .* --model-base"):
        load_pretrained_model(str(tmp_path), None, "llava-v1.5-7b-lora", device="cpu")


def test_an_index_without_weight_map_is_named(tiny_llava_path, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_llava_path, copy)
    (copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="model.safetensors.index.json has no 'weight_map'"):
        load_pretrained_model(str(copy), None, "llava-v1.5-tiny", device="cpu")


def test_a_missing_tower_folder_is_named(tiny_llava_path, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_llava_path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["mm_vision_tower"] = str(tmp_path / "no" / "such" / "clip")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mm_vision_tower=.*no/such/clip.* is not a folder here"):
        load_pretrained_model(str(copy), None, "llava-v1.5-tiny", device="cpu")
    assert os.path.isdir(tiny_llava_path)
