"""LLaVA-NeXT (anyres, spatial_unpad, image_newline) in our package, with pruning per image."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from holov_patches import PruningConfig
from llava.conversation import get_conv_template
from llava.mm_utils import get_anyres_image_grid_shape, process_images, tokenizer_image_token


@pytest.fixture()
def next_model(tiny_next_llava):
    yield tiny_next_llava
    tiny_next_llava[1].set_pruning(None)


def _ids(tok):
    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tok, return_tensors="pt")[None]


IMAGES = [Image.new("RGB", (500, 300), (255, 0, 0)), Image.new("RGB", (300, 700), (0, 0, 255))]


def _unpadded_hw(model, size):
    cols, rows = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, 336)
    w, h = size
    H, W = rows * 24, cols * 24  # padded high-res map
    if w / h > W / H:
        new_h = int(h * (W / w))
        return H - 2 * ((H - new_h) // 2), W
    new_w = int(w * (H / h))
    return H, W - 2 * ((W - new_w) // 2)


def test_unpruned_layout_has_one_newline_per_row(next_model):
    tok, model, proc = next_model
    model.set_pruning(None)
    px = process_images(IMAGES, proc, model.config)
    ids = _ids(tok)
    for img, tiles in zip(IMAGES, px):
        emb = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [tiles], image_sizes=[img.size])[4]
        h, w = _unpadded_hw(model, img.size)
        assert emb.shape[1] - (ids.shape[1] - 1) == 576 + h * (w + 1)
        newline = model.get_model().image_newline
        start = int((ids[0] == -200).nonzero()) + 576
        row_ends = emb[0, start + w:start + h * (w + 1):w + 1]
        assert torch.equal(row_ends, newline.expand_as(row_ends))


@pytest.mark.parametrize("mode", ["faithful", "improved"])
def test_ratio_budget_per_image_and_newlines(next_model, mode):
    tok, model, proc = next_model
    model.set_pruning(PruningConfig(ratio=0.889, mode=mode))
    px = process_images(IMAGES, proc, model.config)
    ids = _ids(tok)
    for img, tiles in zip(IMAGES, px):
        emb = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [tiles], image_sizes=[img.size])[4]
        n_tokens = model.last_pruning.num_tokens[0]
        h, w = _unpadded_hw(model, img.size)
        assert n_tokens == 576 + h * w  # the image's own tokens, newlines excluded
        keep = round(n_tokens * (1 - 0.889))
        index = model.last_pruning.kept_index[0]
        assert index.shape == (keep,) and bool((index >= 0).all())
        visual = emb.shape[1] - (ids.shape[1] - 1)
        if mode == "faithful":
            assert visual == keep  # newlines dropped, as the authors do
        else:
            hi = index[index >= 576] - 576
            rows_kept = int(torch.unique(hi // w).numel())
            assert visual == keep + rows_kept  # one newline closes every row that keeps a token


def test_mixed_sizes_batch_generate_matches_single(next_model):
    tok, model, proc = next_model
    model.set_pruning(PruningConfig(ratio=0.889, mode="improved"))
    px = process_images(IMAGES, proc, model.config)
    ids = _ids(tok)
    single = [model.generate(ids, images=[px[i]], image_sizes=[IMAGES[i].size], do_sample=False, max_new_tokens=3,
                             min_new_tokens=3) for i in range(2)]
    batch = model.generate(torch.cat([ids, ids]), images=list(px), image_sizes=[im.size for im in IMAGES],
                           do_sample=False, max_new_tokens=3, min_new_tokens=3)
    assert torch.equal(batch, torch.cat(single))


def test_mistral_backbone_llava_next_loads_prunes_and_generates(tmp_path):
    from llava.model.builder import load_pretrained_model
    from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM
    from llava.model.tiny import build_tiny_llava

    path = build_tiny_llava(str(tmp_path / "llava-v1.6-mistral-tiny"), arch="llava-1.6", backbone="mistral")
    tok, model, proc, _ = load_pretrained_model(path, None, "llava-v1.6-mistral-tiny", device="cpu",
                                                pruning=PruningConfig(ratio=0.889, mode="improved"))
    assert isinstance(model, LlavaMistralForCausalLM)
    px = process_images(IMAGES[:1], proc, model.config)
    out = model.generate(_ids(tok), images=list(px), image_sizes=[IMAGES[0].size], do_sample=False, max_new_tokens=3,
                         min_new_tokens=3)
    assert out.shape == (1, 3)
    assert model.last_pruning.kept_index[0].shape[0] == round(model.last_pruning.num_tokens[0] * (1 - 0.889))


def test_improved_positions_follow_the_unpruned_layout(next_model):
    tok, model, proc = next_model
    model.set_pruning(PruningConfig(ratio=0.889, mode="improved"))
    img = IMAGES[0]
    px = process_images([img], proc, model.config)
    ids = _ids(tok)
    _, pos, _, _, emb, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [px[0]],
                                                                       image_sizes=[img.size])
    start = int((ids[0] == -200).nonzero())
    h, w = _unpadded_hw(model, img.size)
    span = 576 + h * (w + 1)
    visual = emb.shape[1] - (ids.shape[1] - 1)
    image_pos = pos[0, start:start + visual] - start
    assert bool((image_pos[1:] > image_pos[:-1]).all()) and int(image_pos[-1]) < span
    newline = model.get_model().image_newline
    is_newline = (emb[0, start:start + visual] == newline).all(-1)
    hi = image_pos[image_pos >= 576] - 576
    assert bool(((hi % (w + 1)) == w).eq(is_newline[image_pos >= 576]).all())  # newlines sit at row ends
    assert int(pos[0, start + visual]) == start + span  # the text after the image continues unpruned
