"""HoloV's building blocks on inputs small enough to work out by hand (the expected values
are derived in the comments, not computed by the code under test)."""
from __future__ import annotations

import torch

from holov_patches.methods.holov import crop_grid_side, raster_chunks, released_allocation, square_crops, \
    waterfill_allocation

CPU = torch.device("cpu")


def _crop_tokens(table):
    return [table.slot_index[c][table.valid[c]].tolist() for c in range(table.num_crops)]


def test_square_crops_on_a_grid_that_does_not_divide():
    # 5 x 7 grid, P = 4 -> g = 2; row bands cut at ceil(b * 5 / 2) = 0, 3, 5 -> rows 0-2, 3-4;
    # column bands at ceil(b * 7 / 2) = 0, 4, 7 -> columns 0-3, 4-6. Token = row * 7 + col.
    table = square_crops((5, 7), 4, CPU)
    assert table.sizes.tolist() == [12, 9, 8, 6]
    crops = _crop_tokens(table)
    assert crops[0] == [0, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 17]
    assert crops[1] == [4, 5, 6, 11, 12, 13, 18, 19, 20]
    assert crops[2] == [21, 22, 23, 24, 28, 29, 30, 31]
    assert crops[3] == [25, 26, 27, 32, 33, 34]
    assert table.blocks is None and not table.contiguous


def test_crop_grid_side_is_the_nearest_integer_to_sqrt_p():
    # sqrt: 1 -> 1, 2 -> 1.41, 3 -> 1.73, 6 -> 2.45, 7 -> 2.65, 12 -> 3.46, 13 -> 3.61, 16 -> 4
    assert [crop_grid_side(p) for p in (1, 2, 3, 6, 7, 12, 13, 16)] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_raster_chunks_give_the_first_n_mod_p_one_more_token():
    # N = 10, P = 4: 10 = 4 * 2 + 2 -> sizes 3, 3, 2, 2 starting at 0, 3, 6, 8
    table = raster_chunks(10, 4, CPU)
    assert _crop_tokens(table) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    # P > N: the empty chunks are dropped -> 3 chunks of one token
    assert _crop_tokens(raster_chunks(3, 5, CPU)) == [[0], [1], [2]]


def test_released_allocation_floor_then_remainder_to_the_largest_weight():
    # s = (1, 1, 2), K = 5: w = (.25, .25, .5) (less 1e-6 relative), floor(K w) = (1, 1, 2),
    # remainder 1 goes to the largest w: crop 2 -> (1, 1, 3)
    assert released_allocation(torch.tensor([[1.0, 1.0, 2.0]]), 5).tolist() == [[1, 1, 3]]
    # s = (1, 3), K = 3: floor(.75) = 0, floor(2.25) = 2, remainder 1 to crop 1 -> (0, 3)
    assert released_allocation(torch.tensor([[1.0, 3.0]]), 3).tolist() == [[0, 3]]


def test_waterfill_redistributes_what_a_full_crop_cannot_use():
    # scores (3, 1), sizes (2, 10), K = 6: min(2, 3 l) + min(10, l) = 6 -> crop 0 is full
    # (2 tokens) and l = 4 -> (2, 4)
    assert waterfill_allocation(torch.tensor([[3.0, 1.0]]), torch.tensor([2, 10]), 6).tolist() == [[2, 4]]
    # all scores 0: the positive-score crops hold nothing, the budget goes by size:
    # sizes (3, 1), K = 2 -> shares (1.5, .5): floors (1, 0), the remainder 1 to the larger
    # fraction (tie .5 / .5 -> the earlier crop) -> (2, 0)
    assert waterfill_allocation(torch.tensor([[0.0, 0.0]]), torch.tensor([3, 1]), 2).tolist() == [[2, 0]]
