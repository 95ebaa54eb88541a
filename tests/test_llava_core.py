"""Step 1: the llava package on transformers 5.x with tiny checkpoints."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_helpers import assert_batched_generate_matches_single, prompt_ids as _prompt, random_pixels as _pixels, right_padded
from llava.conversation import get_conv_template
from llava.mm_utils import load_image, process_images, tokenizer_image_token

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tokenizer_image_token_single_bos(tiny_llava):
    tok = tiny_llava[0]
    ids = tokenizer_image_token("USER: <image>\nWhat? <image> and", tok)
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 2
    # the text between the images is tokenized exactly as on its own (minus its BOS)
    alone = tok("\nWhat? ").input_ids[1:]
    first = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[first + 1:first + 1 + len(alone)] == alone


def test_loads_original_format_and_generates_new_tokens_only(tiny_llava, tiny_llava_path):
    tok, model, proc, ctx = tiny_llava
    with open(os.path.join(tiny_llava_path, "config.json")) as f:
        assert json.load(f)["model_type"] == "llava"
    assert ctx == 2048 and model.get_vision_tower().num_patches == 576
    ids = _prompt(tok, "What is this?")[None]
    out = model.generate(ids, images=_pixels(proc, model.config, 1).half(), do_sample=False, max_new_tokens=5,
                         min_new_tokens=5, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, 5)  # only the new tokens, whatever the prompt length
    # the same tokens come out of a manual greedy loop over forward()
    embeds_out = model(input_ids=ids, images=_pixels(proc, model.config, 1))
    assert out[0, 0] == embeds_out.logits[0, -1].argmax()


def test_batched_generate_matches_single(tiny_llava):
    tok, model, proc, _ = tiny_llava
    rows = [_prompt(tok, "What?"), _prompt(tok, "Describe the picture in great detail please.")]
    assert_batched_generate_matches_single(model, rows, _pixels(proc, model.config, 2))


@pytest.mark.parametrize("side", ["right", "left"])
def test_splice_batch_of_three_with_0_1_2_images(tiny_llava, side):
    tok, model, proc, _ = tiny_llava
    rows = [tok("USER: no image here ASSISTANT:", return_tensors="pt").input_ids[0],
            _prompt(tok, "one image", 1), _prompt(tok, "two images", 2)]
    ids, mask = right_padded(rows)
    labels = ids.clone()
    px = _pixels(proc, model.config, 3)
    _, pos, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
        ids, None, mask, None, labels, px, padding_side=side)
    assert pos is None
    n_img = 576
    lengths = [len(rows[0]), len(rows[1]) - 1 + n_img, len(rows[2]) - 2 + 2 * n_img]
    assert embeds.shape[:2] == (3, max(lengths))
    assert new_mask.sum(1).tolist() == lengths
    feats = model.encode_images(px.to(model.dtype))  # [3, 576, D]
    emb = model.get_model().embed_tokens
    for i, (row, n) in enumerate(zip(rows, lengths)):
        valid = new_mask[i].nonzero().squeeze(1)
        assert valid.numel() == n
        if side == "left":
            assert valid[0] == embeds.shape[1] - n
        else:
            assert valid[0] == 0
        row_emb, row_lab = embeds[i, valid], new_labels[i, valid]
        image_pos = (row == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        # text before the first image is the token embedding, images follow in order
        first = image_pos[0] if image_pos else len(row)
        torch.testing.assert_close(row_emb[:first], emb(row[:first]))
        img_index = {1: [0], 2: [1, 2]}.get(i, [])
        offset = first
        for k, j in enumerate(img_index):
            torch.testing.assert_close(row_emb[offset:offset + n_img], feats[j])
            assert (row_lab[offset:offset + n_img] == IGNORE_INDEX).all()
            offset += n_img
            nxt = image_pos[k + 1] if k + 1 < len(image_pos) else len(row)
            text = row[image_pos[k] + 1:nxt]
            torch.testing.assert_close(row_emb[offset:offset + len(text)], emb(text))
            assert torch.equal(row_lab[offset:offset + len(text)], text)
            offset += len(text)
        assert offset == n


def test_more_image_tags_than_images_raises(tiny_llava):
    tok, model, proc, _ = tiny_llava
    ids = _prompt(tok, "two?", 2)[None]
    with pytest.raises(ValueError, match=r"2 <image> tokens .* 1 images"):
        model(input_ids=ids, images=_pixels(proc, model.config, 1))


def test_cls_attention_matches_eager(tiny_llava):
    _, model, proc, _ = tiny_llava
    tower = model.get_vision_tower()
    px = _pixels(proc, model.config, 2)
    feats, cls_attn = tower(px, with_cls_attn=True)
    clip = tower.vision_tower
    clip.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = clip(px, output_hidden_states=True, output_attentions=True)
    finally:
        clip.set_attn_implementation("sdpa")
    ref = out.attentions[tower.select_layer][:, :, 0, 1:].mean(1)
    assert cls_attn.dtype == torch.float32 and cls_attn.shape == (2, 576)
    torch.testing.assert_close(cls_attn, ref, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(feats, out.hidden_states[tower.select_layer][:, 1:], atol=1e-5, rtol=1e-5)


def test_tower_weights_inside_checkpoint_override(tmp_path):
    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import TOWER_DIR, build_tiny_llava, write_tower

    path = build_tiny_llava(str(tmp_path / "llava-v1.5-tiny-tw"), with_tower_weights=True)
    inside = load_pretrained_model(path, None, "llava-v1.5-tiny-tw", device="cpu")[1]
    ref = {k: v.clone() for k, v in inside.get_vision_tower().vision_tower.state_dict().items()}
    torch.manual_seed(123)  # a different random tower beside the checkpoint
    shutil.rmtree(os.path.join(path, TOWER_DIR))
    write_tower(os.path.join(path, TOWER_DIR), 64, 2, 4)
    reloaded = load_pretrained_model(path, None, "llava-v1.5-tiny-tw", device="cpu")[1]
    got = reloaded.get_vision_tower().vision_tower.state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.items())


def test_checkpoint_saved_by_us_reloads(tiny_llava, tmp_path):
    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = tiny_llava
    out = tmp_path / "llava-v1.5-resaved"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    cfg = json.load(open(out / "config.json"))
    assert cfg["model_type"] == "llava_llama"
    # the tower path is relative to the original checkpoint: point at it
    cfg["mm_vision_tower"] = model.get_vision_tower().vision_tower_name
    json.dump(cfg, open(out / "config.json", "w"))
    model2 = load_pretrained_model(str(out), None, "llava-v1.5-resaved", device="cpu")[1]
    ids = _prompt(tok, "hi")[None]
    px = _pixels(proc, model.config, 1)
    torch.testing.assert_close(model2(input_ids=ids, images=px).logits, model(input_ids=ids, images=px).logits)


def test_missing_vision_tower_is_a_clear_error(tiny_llava_path, tmp_path):
    from llava.model.builder import load_pretrained_model

    broken = tmp_path / "llava-broken"
    shutil.copytree(tiny_llava_path, broken)
    cfg = json.load(open(broken / "config.json"))
    del cfg["mm_vision_tower"]
    json.dump(cfg, open(broken / "config.json", "w"))
    with pytest.raises(ValueError, match="mm_vision_tower"):
        load_pretrained_model(str(broken), None, "llava-broken", device="cpu")


def test_bad_image_files(tmp_path, make_image):
    with pytest.raises(ValueError, match="does not exist"):
        load_image(str(tmp_path / "nope.png"))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(str(text))
    for mode in ("L", "CMYK", "RGBA", "P"):
        ext = "jpg" if mode in ("L", "CMYK") else "png"
        img = load_image(make_image(f"m.{ext}", mode=mode))
        assert img.mode == "RGB" and img.size == (64, 48)


def test_process_images_pad_and_anyres(tiny_llava):
    from types import SimpleNamespace

    _, model, proc, _ = tiny_llava
    wide = Image.new("RGB", (100, 50), (255, 0, 0))
    px = process_images([wide], proc, SimpleNamespace(image_aspect_ratio="pad"))
    assert px.shape == (1, 3, 336, 336)
    # padded rows are the processor's mean colour, i.e. ~0 after normalisation
    assert px[0, :, 0].abs().max() < 0.02 and px[0, 0, 168].mean() > 1.0
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=[[336, 672], [672, 336], [672, 672]])
    out = process_images([wide], proc, cfg)
    assert out.shape == (1, 3, 3, 336, 336)  # base + 2 tiles of the 672x336 layout


@pytest.mark.subprocess
def test_cli_answers_piped_question(tiny_llava_path, make_image):
    image = make_image("q.png")
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "llava.serve.cli", "--model-path", tiny_llava_path, "--image-file", image,
                          "--device", "cpu", "--max-new-tokens", "6", "--temperature", "0"],
                         input="What is in the image?\n", capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "ASSISTANT:" in res.stdout
    answer = res.stdout.split("ASSISTANT:", 1)[1].split("USER:")[0].strip()
    assert answer  # the random model says something
    bad = subprocess.run([sys.executable, "-m", "llava.serve.cli", "--model-path", tiny_llava_path, "--image-file",
                          image + ".missing", "--device", "cpu"], input="", capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_conversation_templates_render_like_the_originals():
    expected = {
        "vicuna_v1": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                     "helpful, detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Yo</s>",
        "llava_v0": "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the human's questions.###Human: Hi###Assistant: Yo###",
        "plain": "Hi\nYo",
        "mistral_instruct": "[INST] Hi [/INST] Yo </s>",
        "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nHi<|im_end|>"
                         "<|im_start|>assistant\nYo<|im_end|>",
    }
    for name, text in expected.items():
        conv = get_conv_template(name)
        conv.append_message(conv.roles[0], "Hi")
        conv.append_message(conv.roles[1], "Yo")
        assert conv.get_prompt() == text, name
    llama2 = get_conv_template("llama_2")
    llama2.append_message("USER", "Hi")
    llama2.append_message("ASSISTANT", None)
    assert llama2.get_prompt().startswith("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.")
    assert llama2.get_prompt().endswith("<</SYS>>\n\nHi [/INST]")
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_conv_template("vicuna_v9")


def test_sharded_checkpoint_reads_only_shards_with_tower_weights(tiny_llava, tmp_path):
    from safetensors import safe_open

    from llava.model.builder import TOWER_PREFIX, _files_with_tower_weights

    _, model, _, _ = tiny_llava
    model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    index = json.load(open(tmp_path / "sharded" / "model.safetensors.index.json"))["weight_map"]
    assert len(set(index.values())) > 2  # really sharded
    picked = _files_with_tower_weights(str(tmp_path / "sharded"))
    holding = set()
    for shard in set(index.values()):
        with safe_open(str(tmp_path / "sharded" / shard), framework="pt") as f:
            if any(k.startswith(TOWER_PREFIX) for k in f.keys()):
                holding.add(shard)
    assert holding and set(picked) == holding  # the tower's shards, and only those
