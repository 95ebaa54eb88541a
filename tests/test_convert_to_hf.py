"""llava.convert_to_hf: an original LLaVA-1.5 checkpoint -> the llava-hf layout.

What is checked, on tiny random checkpoints written by ``llava.model.tiny`` (CPU, offline):
the converted model, loaded by transformers' ``LlavaForConditionalGeneration``, gives the
logits of our own loader (``load_pretrained_model``) on the same ids and pixel values
(float32, 1e-5), with the checkpoint's own tower weights winning over ``mm_vision_tower``'s
as in our loader, and greedy decoding agrees; ``AutoProcessor.from_pretrained(DST)`` turns
the chat messages and an image into exactly the ids and pixel values our package builds
(vicuna_v1 prompt, ``expand2square`` padding); the weights are written in the hub key layout
(``vision_tower.vision_model.*``...), load with no missing or unexpected key; the
vocabulary grows by ``<image>`` and ``<pad>`` to a multiple of 64 with the new rows at the
old rows' mean; a tower outside the checkpoint is read from ``mm_vision_tower`` (here in
float16 and sharded, loading back complete); bad input is refused before anything is written.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from llava.convert_to_hf import convert, main

VOCAB = 512  # the tiny tokenizer's size: <image> gets 512, <pad> 513, rows padded to 576
N = 576  # CLIP-336/14 patches
TOWER = "model.vision_tower.vision_tower.vision_model."


def _no_env_pruning():
    return os.environ.pop("HOLOV_PRUNING", None)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny checkpoint WITH its tower weights inside, changed so they differ from the tower
    folder's (the checkpoint's copy must win, as in our loader)."""
    from safetensors.torch import load_file, save_file

    from llava.model.tiny import build_tiny_llava

    path = build_tiny_llava(str(tmp_path_factory.mktemp("src") / "llava-v1.5-tiny"), with_tower_weights=True, seed=3)
    weights = os.path.join(path, "model.safetensors")
    state = load_file(weights)
    key = TOWER + "encoder.layers.0.mlp.fc1.weight"
    torch.manual_seed(4)
    state[key] = state[key] + 0.5 * torch.randn_like(state[key])
    save_file(state, weights, metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    return convert(source, str(tmp_path_factory.mktemp("dst") / "llava-1.5-tiny-hf"))


@pytest.fixture(scope="module")
def ours(source):
    from llava.model.builder import load_pretrained_model

    env = _no_env_pruning()
    try:
        tokenizer, model, processor, _ = load_pretrained_model(source, None, "llava-v1.5-tiny", device="cpu")
    finally:
        if env is not None:
            os.environ["HOLOV_PRUNING"] = env
    return tokenizer, model, processor


@pytest.fixture(scope="module")
def hf_model(converted):
    from transformers import LlavaForConditionalGeneration

    model, info = LlavaForConditionalGeneration.from_pretrained(converted, dtype=torch.float32, output_loading_info=True)
    return model.eval(), info


def wide_image(seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8))  # 50 x 30: padding matters


def our_prompt(question="What is shown in the image?", turns=()):
    from llava.conversation import conv_templates

    conv = conv_templates["vicuna_v1"].copy()
    for q, a in turns:
        conv.append_message(conv.roles[0], q)
        conv.append_message(conv.roles[1], a)
    conv.append_message(conv.roles[0], "<image>\n" + question if not turns else question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def expand_image(ids, image_id):
    """Our ids (IMAGE_TOKEN_INDEX -200 once per image) -> llava-hf ids (N image tokens per image)."""
    out = []
    for t in ids.tolist():
        out += [image_id] * N if t == -200 else [t]
    return torch.tensor([out])


def our_inputs(ours, prompt, image):
    from llava.mm_utils import process_images, tokenizer_image_token

    tokenizer, model, processor = ours
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    pixels = process_images([image], processor, model.config)
    return ids, pixels


@torch.no_grad()
def test_logits_equal_our_loader_on_the_same_ids_and_pixels(ours, hf_model):
    model, info = hf_model
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, pixels = our_inputs(ours, our_prompt(), wide_image())
    reference = ours[1](input_ids=ids[None], images=pixels).logits  # [1, L - 1 + N, VOCAB]
    hf_ids = expand_image(ids, model.config.image_token_id)
    logits = model(input_ids=hf_ids, pixel_values=pixels).logits  # [1, L - 1 + N, 576]
    assert logits.shape == (1, reference.shape[1], 576)
    assert torch.allclose(logits[..., :VOCAB], reference, atol=1e-5, rtol=0)
    # each new row is the mean of the old lm_head rows, so its logit is the mean old logit (linearity)
    assert torch.allclose(logits[..., VOCAB:], reference.mean(-1, keepdim=True).expand(-1, -1, 576 - VOCAB), atol=1e-5)
    # the checkpoint's own tower weights were used (the tower folder's differ)
    from transformers import CLIPVisionModel

    folder = CLIPVisionModel.from_pretrained(os.path.join(ours[1].config._name_or_path, "clip-vit-tiny-patch14-336"))
    fc1 = "encoder.layers.0.mlp.fc1.weight"
    assert not torch.allclose(folder.state_dict()[fc1], model.model.vision_tower.state_dict()[fc1])


@torch.no_grad()
def test_greedy_generate_equals_our_loader(ours, hf_model):
    model, _ = hf_model
    ids, pixels = our_inputs(ours, our_prompt("Describe it."), wide_image(1))
    steps = 5
    reference = ours[1].generate(ids[None], images=pixels, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
    hf_ids = expand_image(ids, model.config.image_token_id)
    out = model.generate(input_ids=hf_ids, pixel_values=pixels, max_new_tokens=steps, min_new_tokens=steps,
                         do_sample=False)
    assert torch.equal(out[0, hf_ids.shape[1]:], reference[0, -steps:])


@torch.no_grad()
def test_processor_builds_our_ids_and_pixels_from_chat_messages(ours, converted):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(converted)
    image = wide_image(2)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in the image?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    # our vicuna_v1 prompt, with the space after <image> standing for the original's chunk-wise dummy prefix
    assert text == our_prompt().replace("<image>", "<image> ")
    batch = processor(images=image, text=text, return_tensors="pt")
    ids, pixels = our_inputs(ours, our_prompt(), image)
    assert torch.equal(batch["input_ids"], expand_image(ids, processor.image_token_id))
    assert torch.allclose(batch["pixel_values"], pixels, atol=1e-6)
    # a later turn and a system message
    turns = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
             {"role": "user", "content": "And now?"}]
    assert processor.apply_chat_template(turns, add_generation_prompt=True) == our_prompt("And now?", [("Hi", "Hello.")])
    system = processor.apply_chat_template([{"role": "system", "content": "Be brief."}] + turns[:1])
    assert system == "Be brief. USER: Hi "
    with pytest.raises(Exception, match="alternate"):
        processor.apply_chat_template([turns[1]])


def test_hub_key_layout_tokens_and_vocabulary(source, converted):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    keys = set()
    files = [f for f in os.listdir(converted) if f.endswith(".safetensors")]
    for name in files:
        with safe_open(os.path.join(converted, name), "pt") as f:
            keys |= set(f.keys())
    prefixes = ("language_model.model.", "language_model.lm_head.", "multi_modal_projector.linear_1.",
                "multi_modal_projector.linear_2.", "vision_tower.vision_model.")
    assert all(k.startswith(prefixes) for k in keys), sorted(k for k in keys if not k.startswith(prefixes))
    for key in ("language_model.model.layers.1.self_attn.q_proj.weight", "language_model.lm_head.weight",
                "multi_modal_projector.linear_2.bias", "vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight",
                "vision_tower.vision_model.post_layernorm.weight", "vision_tower.vision_model.embeddings.class_embedding"):
        assert key in keys
    with open(os.path.join(converted, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert (cfg["image_token_index"], cfg["text_config"]["vocab_size"], cfg["text_config"]["pad_token_id"]) == (512, 576, 513)
    assert (cfg["vision_feature_layer"], cfg["vision_feature_select_strategy"]) == (-2, "default")
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [512, 513] and tokenizer.pad_token == "<pad>"
    assert tokenizer.padding_side == "left"
    with open(os.path.join(converted, "preprocessor_config.json")) as f:
        assert json.load(f)["do_pad"] is True  # image_aspect_ratio 'pad'
    with safe_open(os.path.join(source, "model.safetensors"), "pt") as f:
        old_embed, old_head = f.get_tensor("model.embed_tokens.weight"), f.get_tensor("lm_head.weight")
    with safe_open(os.path.join(converted, files[0]), "pt") as f:
        embed, head = f.get_tensor("language_model.model.embed_tokens.weight"), f.get_tensor("language_model.lm_head.weight")
    assert embed.shape == head.shape == (576, 64)
    assert torch.equal(embed[:VOCAB], old_embed) and torch.equal(head[:VOCAB], old_head)
    assert torch.allclose(embed[VOCAB:], old_embed.mean(0).expand(576 - VOCAB, -1), atol=1e-6)
    assert torch.allclose(head[VOCAB:], old_head.mean(0).expand(576 - VOCAB, -1), atol=1e-6)


def test_tower_outside_the_checkpoint_comes_from_mm_vision_tower_sharded_float16(tiny_llava_path, tmp_path):
    from safetensors import safe_open
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    dst = convert(tiny_llava_path, str(tmp_path / "hf"), dtype="float16", max_shard_size="300KB")
    with open(os.path.join(dst, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    assert len(set(weight_map.values())) > 1  # sharded
    folder = CLIPVisionModel.from_pretrained(os.path.join(tiny_llava_path, "clip-vit-tiny-patch14-336")).state_dict()
    for key, value in folder.items():
        hub = "vision_tower.vision_model." + key
        with safe_open(os.path.join(dst, weight_map[hub]), "pt") as f:
            stored = f.get_tensor(hub)
        assert stored.dtype == torch.float16 and torch.equal(stored, value.half()), key
    _, info = LlavaForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def _write_config(folder, **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def test_bad_input_is_refused_before_anything_is_written(tiny_llava_path, tmp_path, capsys):
    dst = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"config.json not found in SRC .*empty"):
        convert(str(empty), str(dst))
    with pytest.raises(ValueError, match="does not exist"):
        convert(str(tmp_path / "missing"), str(dst))
    plain = _write_config(tmp_path / "llama", model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=32)
    with pytest.raises(ValueError, match="not a LLaVA checkpoint: its config.json has no mm_vision_tower"):
        convert(plain, str(dst))
    linear = _write_config(tmp_path / "linear", model_type="llava", mm_vision_tower="openai/clip", mm_projector_type="linear")
    with pytest.raises(ValueError, match=r"mm_projector_type='linear'.*accepted: \('mlp2x_gelu',\)"):
        convert(linear, str(dst))
    anyres = _write_config(tmp_path / "next", model_type="llava", mm_vision_tower="openai/clip",
                           mm_projector_type="mlp2x_gelu", image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad")
    with pytest.raises(ValueError, match="anyres"):
        convert(anyres, str(dst))
    hf = _write_config(tmp_path / "hf", model_type="llava", architectures=["LlavaForConditionalGeneration"], text_config={})
    with pytest.raises(ValueError, match="already in the llava-hf layout"):
        convert(hf, str(dst))
    with pytest.raises(ValueError, match=r"--pad-to-multiple-of 0 must be an integer in \[1, 4096\]"):
        convert(tiny_llava_path, str(dst), pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="--max-shard-size '5G' must be a positive size with a unit KB, MB, GB or TB"):
        convert(tiny_llava_path, str(dst), max_shard_size="5G")
    assert not dst.exists()

    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty: pass --overwrite"):
        convert(tiny_llava_path, str(dst))
    with pytest.raises(SystemExit) as exit_info:  # the command line says the same and exits 2
        main([tiny_llava_path, str(dst)])
    assert exit_info.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert os.listdir(dst) == ["keep.txt"]
    with pytest.raises(ValueError, match="is SRC or a folder above it"):
        convert(tiny_llava_path, os.path.dirname(tiny_llava_path), overwrite=True)
    # with --overwrite the folder is replaced by a complete checkpoint
    assert main([tiny_llava_path, str(dst), "--overwrite"]) == 0
    assert "keep.txt" not in os.listdir(dst) and os.path.isfile(dst / "config.json")
    assert not [n for n in os.listdir(tmp_path) if ".converting-" in n]  # no temporary folder left behind
