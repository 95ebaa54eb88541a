"""Step 2 integration: the registry's pruner inside prepare_inputs_labels_for_multimodal."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import numpy as np
import torch
from PIL import Image

from holov_patches import PruningConfig
from llava_helpers import prompt_ids as _ids, random_pixels as _pixels, right_padded

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def model_with(tiny_llava):
    """Yield a setter for the shared tiny model's pruning; restores 'off' afterwards."""
    tok, model, proc, _ = tiny_llava

    def _set(cfg):
        model.set_pruning(cfg)
        return tok, model, proc

    yield _set
    model.set_pruning(None)


@pytest.mark.parametrize("mode", ["faithful", "improved"])
@pytest.mark.parametrize("keep", [64, 128, 192])
def test_sequence_drops_by_pruned_count_and_tokens_are_projector_rows(model_with, mode, keep):
    tok, model, proc = model_with(None)
    ids = _ids(tok)[None]
    px = _pixels(proc, model.config, 1)
    full = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px)[4]
    feats = model.encode_images(px)[0]  # [576, D] unpruned projector output
    model.set_pruning(PruningConfig(keep=keep, mode=mode))
    pruned = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px)[4]
    text = ids.shape[1] - 1
    assert 30 <= text <= 80  # the LLM sees ~35-ish text tokens...
    assert full.shape[1] == text + 576 and pruned.shape[1] == text + keep  # ...plus K visual tokens
    index = model.last_pruning.kept_index[0]
    assert index.shape == (keep,)
    start = int((ids[0] == -200).nonzero())
    real = index >= 0
    torch.testing.assert_close(pruned[0, start:start + keep][real], feats[index[real]])
    assert torch.equal(pruned[0, :start], full[0, :start])
    if mode == "improved":
        assert bool(real.all()) and bool((index[1:] > index[:-1]).all())


def test_keep_all_is_bit_identical_to_off(model_with):
    tok, model, proc = model_with(None)
    ids = _ids(tok)[None]
    px = _pixels(proc, model.config, 1)
    off = model(input_ids=ids, images=px).logits
    for mode in ("faithful", "improved"):
        model.set_pruning(PruningConfig(keep=576, mode=mode))
        assert torch.equal(model(input_ids=ids, images=px).logits, off)


def test_batches_and_lists_of_images_are_pruned_per_image(model_with):
    tok, model, proc = model_with(PruningConfig(keep=64))
    rows = [_ids(tok, "one"), _ids(tok, "two images please", 2)]
    ids, mask = right_padded(rows)
    px = _pixels(proc, model.config, 3)
    _, _, new_mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, px)
    assert new_mask.sum(1).tolist() == [len(rows[0]) - 1 + 64, len(rows[1]) - 2 + 128]
    assert len(model.last_pruning.kept_index) == 3
    # a list of [3, S, S] tensors gives the same result as the stacked batch
    as_list = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, list(px))[4]
    torch.testing.assert_close(as_list, embeds)
    # each image is pruned on its own: image 1 alone gives the same kept tokens
    solo = model.prepare_inputs_labels_for_multimodal(rows[0][None], None, None, None, None, px[:1])[4]
    torch.testing.assert_close(solo[0], embeds[0, :solo.shape[1]])


def test_generate_with_pruning_returns_new_tokens(model_with):
    tok, model, proc = model_with(PruningConfig(keep=64, mode="improved"))
    out = model.generate(_ids(tok)[None], images=_pixels(proc, model.config, 1), do_sample=False, max_new_tokens=4,
                         min_new_tokens=4, pad_token_id=0)
    assert out.shape == (1, 4)


def test_precedence_explicit_env_saved(tiny_llava_path, tmp_path, monkeypatch, capsys):
    from llava.model.builder import load_pretrained_model

    ckpt = tmp_path / "llava-v1.5-saved"
    shutil.copytree(tiny_llava_path, ckpt)
    cfg = json.load(open(ckpt / "config.json"))
    cfg["holov"] = PruningConfig(keep=128, mode="improved").to_dict()
    json.dump(cfg, open(ckpt / "config.json", "w"))

    def load(**kw):
        return load_pretrained_model(str(ckpt), None, "llava-v1.5-saved", device="cpu", **kw)[1].get_pruning()

    monkeypatch.delenv("HOLOV_PRUNING", raising=False)
    assert load() == PruningConfig(keep=128, mode="improved")  # saved
    assert "holov(keep=128, mode=improved" in capsys.readouterr().out  # printed once at load
    monkeypatch.setenv("HOLOV_PRUNING", "keep=32,mode=faithful")
    assert load().keep == 32  # env beats saved
    assert load(pruning={"keep": 16}).keep == 16  # explicit beats env
    assert load(pruning="method=none") is None  # explicit off beats everything


@pytest.mark.subprocess
def test_cli_with_holov_tokens_answers(tiny_llava_path, make_image):
    image = make_image("cli.png")
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("HOLOV_PRUNING", None)
    res = subprocess.run([sys.executable, "-m", "llava.serve.cli", "--model-path", tiny_llava_path, "--image-file", image,
                          "--device", "cpu", "--max-new-tokens", "5", "--temperature", "0", "--holov-tokens", "64",
                          "--debug"], input="What is it?\n", capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "[holov] visual-token pruning: holov(keep=64" in res.stdout
    assert "[holov] kept [64] of [576] visual tokens" in res.stdout


@pytest.mark.subprocess
def test_piped_chat_prints_the_question_draws_the_picture_and_leaves_no_prompt(tiny_llava_path, make_image, tmp_path):
    image, picture = make_image("cli.png"), tmp_path / "kept.png"
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("HOLOV_PRUNING", None)
    res = subprocess.run([sys.executable, "-m", "llava.serve.cli", "--model-path", tiny_llava_path, "--image-file", image,
                          "--device", "cpu", "--max-new-tokens", "3", "--temperature", "0", "--holov-tokens", "64",
                          "--kept-picture", str(picture)], input="What is it?\n", capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    asked = lines.index("USER: What is it?")
    assert lines[asked + 1].startswith("ASSISTANT: ")
    assert lines[-1].startswith("[holov] kept 64 of 576 visual tokens") and picture.is_file()  # one load, one picture
    assert sum("visual-token pruning:" in line for line in lines) == 1  # the model was loaded once
    assert not any(line.strip() == "USER:" for line in lines)  # no dangling prompt at the end of input


@pytest.mark.subprocess
def test_visualize_writes_picture(tiny_llava_path, tmp_path):
    out = tmp_path / "kept.png"
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("HOLOV_PRUNING", None)
    res = subprocess.run([sys.executable, "-m", "llava.serve.visualize", "--model-path", tiny_llava_path,
                          "--image-file", os.path.join(REPO, "playground/examples/shapes.png"), "--device", "cpu",
                          "--holov-tokens", "64", "--holov-mode", "improved", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "kept 64 of 576 visual tokens" in res.stdout
    img = Image.open(out)
    assert img.width > 300 and img.height > 300  # one panel, title and legend


def test_kept_picture_has_title_legend_padding_and_panels():
    from llava.serve.visualize import Panel, figure_title, kept_figure, padding_cells

    # 100 x 50 padded to a 100 x 100 square, 4 x 4 cells: rows 0 and 3 hold only padding.
    assert padding_cells((100, 50), 4).reshape(4, 4).all(axis=1).tolist() == [True, False, False, True]
    assert not padding_cells((100, 50), 4).reshape(4, 4)[1:3].any()
    assert padding_cells((64, 64), 24).sum() == 0
    config = PruningConfig(keep=3, mode="improved")
    kept = np.zeros(16, dtype=bool)
    kept[[5, 6, 9]] = True
    panels = [Panel("base tile", Image.new("RGB", (8, 8)), (4, 4), kept, np.arange(16) // 8, padding_cells((100, 50), 4)),
              Panel("high-res map (unpadded)", Image.new("RGB", (8, 4)), (2, 4), np.ones(8, dtype=bool))]
    title = figure_title(config, 3, 24, 0, parts=2)
    assert title == "holov: kept 3 of 24 visual tokens, mode improved"
    assert figure_title(PruningConfig(keep=64), 60, 576, 4) == \
        "holov: kept 60 of 576 visual tokens, mode faithful, P=16 crops (+ 4 zero pads)"
    fig = kept_figure(panels, title)
    assert fig._suptitle.get_text() == title
    assert [ax.get_title() for ax in fig.axes] == ["base tile: 3 of 16 kept (4x4)", "high-res map (unpadded): 8 of 8 kept (2x4)"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["kept token", "pruned token", "padding (no image)", "HoloV crop border"]


def test_improved_keeps_original_positions_and_decodes_from_the_unpruned_length(model_with):
    tok, model, proc = model_with(PruningConfig(keep=64, mode="improved"))
    ids = _ids(tok)[None]
    px = _pixels(proc, model.config, 1)
    _, pos, _, _, emb, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px)
    start = int((ids[0] == -200).nonzero())
    index = model.last_pruning.kept_index[0]
    assert torch.equal(pos[0, :start], torch.arange(start))
    assert torch.equal(pos[0, start:start + 64], start + index)  # the kept tokens' own positions
    text_after = ids.shape[1] - 1 - start
    assert torch.equal(pos[0, start + 64:], start + 576 + torch.arange(text_after))  # as if nothing was pruned
    # generate == a greedy loop that feeds those positions and continues at the unpruned length
    out = model.generate(ids, images=px, do_sample=False, max_new_tokens=4, min_new_tokens=4)
    lm = model.get_model()
    with torch.no_grad():
        step = lm(inputs_embeds=emb, position_ids=pos, use_cache=True)
        cache = step.past_key_values if getattr(step, "past_key_values", None) is not None else step.cache
        tokens = [model.lm_head(step.last_hidden_state[:, -1]).argmax(-1)]
        for t in range(3):
            step = lm(inputs_embeds=lm.embed_tokens(tokens[-1])[:, None], cache=cache, use_cache=True,
                      position_ids=torch.tensor([[ids.shape[1] - 1 + 576 + t]]))
            tokens.append(model.lm_head(step.last_hidden_state[:, -1]).argmax(-1))
    assert torch.equal(out, torch.stack(tokens, dim=1))
    # the positions matter: compact numbering gives other logits
    original = model(input_ids=ids, images=px).logits
    model.set_pruning(PruningConfig(keep=64, mode="improved", position_ids="compact"))
    assert model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px)[1] is None
    assert not torch.allclose(model(input_ids=ids, images=px).logits, original)


def test_faithful_and_baselines_renumber_positions_like_the_authors(model_with):
    tok, model, proc = model_with(PruningConfig(keep=64))
    assert not model.get_pruning().keeps_original_positions
    ids = _ids(tok)[None]
    assert model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, _pixels(proc, model.config, 1))[1] is None
    assert PruningConfig(method="cls_topk", keep=64, position_ids="original").keeps_original_positions
    with pytest.raises(ValueError, match="position_ids='gaps'"):
        PruningConfig(keep=64, position_ids="gaps")
