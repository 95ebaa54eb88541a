"""Mutation-audit remainder (issue 12): cases that a changed constant or comparison in the
position bookkeeping would pass unnoticed elsewhere.

(a) ``position_ids="original"`` with faithful HoloV's zero pads (kept index -1): a pad takes
    the LAST position of its image's unpruned span, in our LLaVA path
    (``llava_arch._offsets_in_span``) and in the transformers adapters' column map
    (``holov_patches.adapters.base.compact_columns``);
(b) an unmasked forward (``attention_mask=None``) whose rows differ in length only after the
    images are spliced in: the exact padding, mask and positions ``_pad_batch`` makes, and
    each row's logits equal to that row run alone.

Every expected value is worked out by hand in the comments next to it.
"""
from __future__ import annotations

import pytest
import torch

from holov_patches import PruningConfig, registry
from holov_patches.adapters.base import compact_columns
from holov_patches.methods.holov import prune as holov_prune
from holov_patches.registry import register_pruner
from llava.constants import IMAGE_TOKEN_INDEX as IMG
from llava.model.llava_arch import _offsets_in_span
from llava_helpers import random_pixels

N = 576  # visual tokens of the tiny LLaVA-1.5 tower (336 px / 14 px patches = 24 x 24)


@pytest.fixture()
def scratch(monkeypatch):
    """register(name, fn): file ``fn`` as a projector-stage pruner for this test only."""

    def register(name, fn):
        register_pruner(name)(fn)
        entry = registry._REGISTRY.pop(name)
        monkeypatch.setitem(registry._REGISTRY, name, entry)  # removed again after the test
        return name

    return register


@pytest.fixture()
def llava(tiny_llava):
    """(model, image processor) of the session's tiny LLaVA; pruning is switched off again afterwards."""
    _, model, proc, _ = tiny_llava
    model.set_pruning(None)
    yield model, proc
    model.set_pruning(None)


# ---------------------------------------------------------------- (a) zero pads
def test_offsets_in_span_gives_pads_and_merged_rows_the_span_s_last_position():
    # LLaVA-1.5: the span is the N tokens. Index 0 is a real token (a `> 0` test would
    # misread it as a pad); -1 (zero pad) and -2 (merged row) take N - 1 = 575.
    got = _offsets_in_span(torch.tensor([0, 7, 575, -1, -2]), None, N)
    assert got.tolist() == [0, 7, 575, 575, 575]
    # LLaVA-NeXT, 4 base tokens then a 2 x 3 high-res map with a newline after each row:
    # span = 4 + 2 * (3 + 1) = 12, laid out  0 1 2 3 | 4 5 6 nl(7) | 8 9 10 nl(11).
    # high-res token h = index - 4 sits at 4 + (h // 3) * 4 + h % 3:
    #   4 -> h 0 -> 4;  6 -> h 2 -> 6;  7 -> h 3 -> 8;  9 -> h 5 -> 10;  pads -> 11.
    got = _offsets_in_span(torch.tensor([0, 3, 4, 6, 7, 9, -1, -2]), (4, 2, 3), 12)
    assert got.tolist() == [0, 3, 4, 6, 8, 10, 11, 11]


def test_compact_columns_maps_a_zero_pad_to_its_run_s_last_column():
    # Row 0: text 0 1, image A at columns 2-5 (run 4), text 6 7.
    # Row 1: text 0, image B at columns 1-3 (run 3), text 4-7.
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0],
                         [0, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    # A keeps 2: offsets 1 -> column 2 + 1 = 3, pad -> its last column 2 + 3 = 5; the first two
    # placeholders (columns 2, 3) stay and 4, 5 are dropped: row 0 = 0 1 3 5 6 7 (6 columns).
    # B keeps 3: offsets 2 -> 1 + 2 = 3, 0 -> 1 (a real token, not a pad), pad -> 1 + 2 = 3:
    # row 1 = 0 3 1 3 4 5 6 7 (8 columns). Row 0 is left-padded with two -1 columns.
    source = compact_columns(mask, [4, 3], [torch.tensor([1, -1]), torch.tensor([2, 0, -1])])
    assert source.tolist() == [[-1, -1, 0, 1, 3, 5, 6, 7],
                               [0, 3, 1, 3, 4, 5, 6, 7]]


HAND_ATTN = torch.cat([torch.ones(N // 2), torch.zeros(N // 2)])  # all attention on the first half


def faithful_on_hand_attention(tokens, cls_attn, keep, *, grid=None):
    """Faithful HoloV with P = 2 raster chunks and alpha = 0 on HAND_ATTN instead of the tower's row."""
    attn = HAND_ATTN.to(cls_attn.dtype).expand(tokens.shape[0], N)
    return holov_prune(tokens, attn, keep, num_crops=2, mode="faithful", alpha=0.0)


@torch.no_grad()
def test_original_positions_give_faithful_zero_pads_the_image_s_last_position(llava, scratch):
    model, proc = llava
    # Faithful HoloV, K = 300, P = 2 chunks of 288 tokens, alpha = 0: a token scores
    # 1000 * attention, so the chunk scores are 1000 and 0 and the weights 1 and 0;
    # floor(300 * 1) = 300 tokens go to chunk 0, which holds only 288: it is taken whole
    # (tokens 0..287 in raster order) and 300 - 288 = 12 zero pads (index -1) follow.
    model.set_pruning(PruningConfig(method=scratch("t_faithful_pads", faithful_on_hand_attention), keep=300,
                                    position_ids="original"))
    ids = torch.tensor([[1, 100, 101, IMG, 102, 103, 104]])  # image at column 3, three text tokens after it
    _, positions, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
        ids, None, None, None, None, random_pixels(proc, model.config, 1))
    assert model.last_pruning.kept_index[0].tolist() == list(range(288)) + [-1] * 12
    # text 0 1 2; kept tokens 3 + 0..287; the 12 pads take the span's last position
    # 3 + 575 = 578; the text after the image continues at 3 + 576 = 579.
    expected = [0, 1, 2] + [3 + i for i in range(288)] + [578] * 12 + [579, 580, 581]
    assert positions.tolist() == [expected]
    assert embeds.shape[:2] == (1, 3 + 300 + 3)
    assert torch.count_nonzero(embeds[0, 3 + 288:3 + 300]) == 0  # the pads reach the LLM as zero vectors
    assert mask is None and labels is None  # one row, nothing to mask


# ---------------------------------------------------------------- (b) unmasked uneven rows
# Both rows have 7 ids, so no attention mask is needed to batch them; after splicing, row 0
# (one image) and row 1 (two images) differ in length.
ROW0 = [1, 100, 101, IMG, 102, 103, 104]
ROW1 = [1, 100, IMG, 101, IMG, 102, 103]


def _layout(lengths, total, side):
    """Hand-built [B, total] bool mask of rows of the given lengths padded on ``side``."""
    rows = []
    for n in lengths:
        real, pad = [True] * n, [False] * (total - n)
        rows.append(pad + real if side == "left" else real + pad)
    return torch.tensor(rows)


def _real(x, row, n, side):
    """The n real columns of row ``row`` of x [B, L, ...]."""
    return x[row, -n:] if side == "left" else x[row, :n]


@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_unmasked_batch_of_uneven_rows_is_padded_masked_and_equals_each_row_alone(llava, side):
    model, proc = llava
    px = random_pixels(proc, model.config, 3)  # image 0 for row 0, images 1 and 2 for row 1
    ids = torch.tensor([ROW0, ROW1])
    _, positions, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
        ids, None, None, None, None, px, padding_side=side)
    # row 0: 6 text ids + 576 = 582 embeddings; row 1: 5 text ids + 2 * 576 = 1157
    assert embeds.shape[:2] == (2, 1157)
    assert mask.dtype == torch.bool and torch.equal(mask, _layout([582, 1157], 1157, side))
    pad = slice(0, 1157 - 582) if side == "left" else slice(582, 1157)
    assert torch.count_nonzero(embeds[0, pad]) == 0  # pads are zero vectors
    assert positions is None and labels is None  # none were given, none are made (LLaVA's contract)

    logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    alone0 = model(input_ids=ids[:1], images=px[0:1]).logits[0]  # [582, V]
    alone1 = model(input_ids=ids[1:], images=px[1:3]).logits[0]  # [1157, V]
    assert alone0.shape[0] == 582 and alone1.shape[0] == 1157
    torch.testing.assert_close(_real(logits, 0, 582, side), alone0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_real(logits, 1, 1157, side), alone1, rtol=1e-4, atol=1e-4)
    if side == "right":  # the model's own unmasked forward pads on the config's side (right)
        end_to_end = model(input_ids=ids, images=px).logits
        torch.testing.assert_close(end_to_end, logits, rtol=1e-5, atol=1e-5)


def keep_0_5_9(tokens, cls_attn, keep, *, grid=None):
    """Keeps tokens 0, 5 and 9 of every image, in that order."""
    index = torch.tensor([0, 5, 9]).expand(tokens.shape[0], 3)
    return tokens[:, [0, 5, 9]], index


@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_unmasked_uneven_rows_with_original_positions(llava, scratch, side):
    model, proc = llava
    model.set_pruning(PruningConfig(method=scratch("t_keep_0_5_9", keep_0_5_9), keep=3, position_ids="original"))
    px = random_pixels(proc, model.config, 3)
    ids = torch.tensor([ROW0, ROW1])
    _, positions, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        ids, None, None, None, None, px, padding_side=side)
    # row 0: text 0 1 2 | image at 3: 3 + 0, 3 + 5, 3 + 9 = 3 8 12 | text at 3 + 576 = 579 580 581
    #        -> 9 embeddings
    # row 1: text 0 1 | image at 2: 2 7 11 | text at 2 + 576 = 578 | image at 579: 579 584 588
    #        | text at 579 + 576 = 1155 1156 -> 11 embeddings
    row0 = [0, 1, 2, 3, 8, 12, 579, 580, 581]
    row1 = [0, 1, 2, 7, 11, 578, 579, 584, 588, 1155, 1156]
    padded0 = [0, 0] + row0 if side == "left" else row0 + [0, 0]  # pad columns get position 0
    assert positions.tolist() == [padded0, row1]
    assert torch.equal(mask, _layout([9, 11], 11, side))

    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    alone0 = model(input_ids=ids[:1], images=px[0:1]).logits[0]
    alone1 = model(input_ids=ids[1:], images=px[1:3]).logits[0]
    torch.testing.assert_close(_real(logits, 0, 9, side), alone0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_real(logits, 1, 11, side), alone1, rtol=1e-4, atol=1e-4)
