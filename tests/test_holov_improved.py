"""HoloV improved mode: 2-D crops, water-filled budget (exactly K real tokens), raster order,
and its named options (crop_shape, rank_by, diversity_scale)."""
import math

import pytest
import torch

import reference_holov_loop as REF  # tests/ is on sys.path under pytest
from holov_patches import PruningConfig, prune_visual_tokens
from holov_patches.methods.holov import crop_grid_side, prune, raster_chunks, score_crops, square_crops, waterfill_allocation


CPU = torch.device("cpu")


def _inputs(seed, batch, num_tokens, dim, attn="softmax"):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, num_tokens, dim, generator=g)
    cls_attn = torch.randn(batch, num_tokens, generator=g).softmax(-1) if attn == "softmax" else torch.rand(batch, num_tokens, generator=g)
    return tokens, cls_attn


def _assert_k_distinct_in_raster_order(tokens, kept, index, keep):
    assert index.shape == (tokens.shape[0], keep) and index.dtype == torch.int64
    assert bool((index >= 0).all()) and bool((index < tokens.shape[1]).all())
    assert bool((index.diff(dim=1) > 0).all())  # strictly increasing: distinct and in raster order
    assert torch.equal(kept, tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[2])))


def _crop_counts(index, table):
    owner = torch.empty(int(table.sizes.sum()), dtype=torch.long)
    owner[table.slot_index[table.valid]] = torch.arange(table.num_crops)[:, None].expand_as(table.valid)[table.valid]
    return torch.bincount(owner[index], minlength=table.num_crops)


# ---- crops ---------------------------------------------------------------------------

@pytest.mark.parametrize("num_crops,side", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2), (7, 3), (8, 3), (12, 3), (13, 4), (16, 4), (20, 4), (21, 5)])
def test_crop_grid_side_is_the_integer_nearest_sqrt_p(num_crops, side):
    assert crop_grid_side(num_crops) == side == round(math.sqrt(num_crops))


@pytest.mark.parametrize("grid,num_crops", [((24, 24), 16), ((24, 24), 8), ((5, 7), 9), ((3, 3), 4), ((2, 9), 16), ((1, 6), 4), ((12, 20), 5)])
def test_square_crops_partition_the_grid_into_rectangles(grid, num_crops):
    rows, cols = grid
    table = square_crops(grid, num_crops, CPU)
    members = table.slot_index[table.valid]
    assert torch.equal(members.sort().values, torch.arange(rows * cols))  # every token exactly once
    assert bool((table.sizes >= 1).all()) and torch.equal(table.valid.sum(1), table.sizes)
    side = crop_grid_side(num_crops)
    assert table.num_crops == min(side, rows) * min(side, cols)
    for c in range(table.num_crops):  # a crop is a full rectangle, listed in raster order
        cells = table.slot_index[c, table.valid[c]]
        r, q = cells // cols, cells % cols
        assert cells.numel() == (r.max() - r.min() + 1) * (q.max() - q.min() + 1)
        assert bool((cells.diff() > 0).all())


def test_llava_crops_are_6x6_squares():
    table = square_crops((24, 24), 16, CPU)
    assert table.num_crops == 16 and bool((table.sizes == 36).all())
    assert table.slot_index[0].tolist() == [r * 24 + c for r in range(6) for c in range(6)]


# ---- budget --------------------------------------------------------------------------

def _waterfill_shares_by_iteration(weights, sizes, keep):
    """The obvious loop: give K in proportion to w, cap full crops, re-share the rest; repeat."""
    shares = [0.0] * len(sizes)
    full = set()
    while True:
        free = [c for c in range(len(sizes)) if c not in full]
        budget = keep - sum(sizes[c] for c in full)
        total = sum(weights[c] for c in free)
        new_full = {c for c in free if budget * weights[c] / total >= sizes[c]}
        if not new_full:
            for c in free:
                shares[c] = budget * weights[c] / total
            for c in full:
                shares[c] = float(sizes[c])
            return shares
        full |= new_full


@pytest.mark.parametrize("seed", range(40))
def test_waterfill_matches_the_iterative_definition(seed):
    g = torch.Generator().manual_seed(seed)
    crops = int(torch.randint(1, 20, (1,), generator=g))
    sizes = torch.randint(1, 12, (crops,), generator=g)
    keep = int(torch.randint(1, int(sizes.sum()) + 1, (1,), generator=g))
    scores = torch.rand(3, crops, generator=g) ** 4 + 1e-3  # skewed, so some crops saturate
    alloc = waterfill_allocation(scores, sizes, keep)
    assert bool((alloc.sum(-1) == keep).all()) and bool((alloc >= 0).all()) and bool((alloc <= sizes).all())
    for b in range(3):
        shares = torch.tensor(_waterfill_shares_by_iteration(scores[b].double().tolist(), sizes.tolist(), keep))
        assert bool(((alloc[b] - shares).abs() < 1 + 1e-9).all()), (alloc[b], shares)
        floors = shares.floor()
        extra = alloc[b] - floors.long()  # largest remainder: extras go to the largest fractional parts
        if extra.any() and (extra == 0).any():
            assert (shares - floors)[extra == 1].min() >= (shares - floors)[(extra == 0) & (floors < sizes)].max() - 1e-9


def test_waterfill_with_zero_scores_falls_back_to_sizes_and_never_pads():
    sizes = torch.tensor([4, 4, 8, 2])
    alloc = waterfill_allocation(torch.zeros(1, 4), sizes, 9)
    assert alloc.tolist() == [[2, 2, 4, 1]]  # 9 * size / 18
    # positive crops hold only 3 tokens: they are kept whole, the other 6 go by size (4:8 -> 2:4)
    alloc = waterfill_allocation(torch.tensor([[0.0, 1.0, 0.0, 5.0]]), torch.tensor([4, 1, 8, 2]), 9)
    assert alloc.tolist() == [[2, 1, 4, 2]]
    alloc = waterfill_allocation(torch.tensor([[-3.0, 2.0, 2.0]]), torch.tensor([5, 5, 5]), 6)
    assert alloc.tolist() == [[0, 3, 3]]  # a negative score counts as zero


def test_hand_worked_improved_case():
    # 4x4 grid, P=4 -> 2x2 crops of 2x2: TL {0,1,4,5}, TR {2,3,6,7}, BL {8,9,12,13}, BR {10,11,14,15}.
    # Orthogonal tokens: var = 0, scores = 1000 * mean attn = 250, 25, 30, 2.5.
    # K=7: TL would get 7*250/307.5 = 5.7 > 4, so it is full; the other 3 go 25:30:2.5 ->
    # 1.30, 1.57, 0.13 -> floors 1, 1, 0 and the last token to the largest remainder (BL).
    # TL whole, TR's top token 7, BL's top two 8 and 12; returned in raster order.
    attn = torch.zeros(1, 16)
    for cells, values in [([0, 1, 4, 5], [0.4, 0.3, 0.2, 0.1]), ([2, 3, 6, 7], [0.03, 0.01, 0.02, 0.04]),
                          ([8, 9, 12, 13], [0.06, 0.02, 0.03, 0.01]), ([10, 11, 14, 15], [0.004, 0.003, 0.002, 0.001])]:
        attn[0, cells] = torch.tensor(values)
    _, index = prune(3.0 * torch.eye(16)[None], attn, 7, num_crops=4, mode="improved")
    assert index.tolist() == [[0, 1, 4, 5, 7, 8, 12]]


def test_a_saturated_crop_passes_its_overflow_to_the_others():
    tokens, cls_attn = _inputs(1, 1, 576, 16)
    table = square_crops((24, 24), 16, CPU)
    cls_attn[0, table.slot_index[5]] += 10.0  # crop 5 holds nearly all the attention
    kept, index = prune(tokens, cls_attn, 200, num_crops=16, mode="improved")
    _assert_k_distinct_in_raster_order(tokens, kept, index, 200)
    counts = _crop_counts(index[0], table)
    assert counts[5] == 36 and int(counts.sum()) == 200
    _, faithful = prune(tokens, cls_attn, 200, num_crops=16)  # the released rule loses that budget to zero vectors
    assert int((faithful < 0).sum()) > 0


# ---- properties ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(30))
def test_keeps_exactly_k_distinct_tokens_in_raster_order(seed):
    g = torch.Generator().manual_seed(500 + seed)
    rows, cols = (int(v) for v in torch.randint(1, 16, (2,), generator=g))
    num_tokens = rows * cols
    keep = int(torch.randint(1, num_tokens + 1, (1,), generator=g))
    num_crops = int(torch.randint(1, 30, (1,), generator=g))
    tokens, cls_attn = _inputs(seed, 2, num_tokens, 8, "uniform")
    for options in [{}, {"rank_by": "attention"}, {"diversity_scale": "image"}, {"crop_shape": "raster"}]:
        kept, index = prune(tokens, cls_attn, keep, num_crops=num_crops, mode="improved", grid=(rows, cols), **options)
        _assert_k_distinct_in_raster_order(tokens, kept, index, min(keep, num_tokens))


@pytest.mark.parametrize("attn", ["zeros", "constant", "one_hot"])
def test_degenerate_attention_still_keeps_k_real_tokens(attn):
    tokens, _ = _inputs(2, 2, 576, 16)
    cls_attn = {"zeros": torch.zeros(2, 576), "constant": torch.full((2, 576), 1 / 576),
                "one_hot": torch.nn.functional.one_hot(torch.tensor([3, 400]), 576).float()}[attn]
    kept, index = prune(tokens, cls_attn, 64, mode="improved")
    _assert_k_distinct_in_raster_order(tokens, kept, index, 64)
    if attn == "zeros":  # budget by crop size: 4 of each 6x6 crop
        assert bool((_crop_counts(index[0], square_crops((24, 24), 16, CPU)) == 4).all())


def test_non_square_n_needs_a_grid_or_raster_crops():
    tokens, cls_attn = _inputs(3, 1, 60, 8)
    with pytest.raises(ValueError, match="needs grid=\\(rows, cols\\)"):
        prune(tokens, cls_attn, 10, mode="improved")
    for kwargs in [{"grid": (6, 10)}, {"grid": [3, 20]}, {"crop_shape": "raster"}]:
        kept, index = prune(tokens, cls_attn, 10, mode="improved", **kwargs)
        _assert_k_distinct_in_raster_order(tokens, kept, index, 10)


@pytest.mark.parametrize("bad", [{"rank_by": "variance"}, {"crop_shape": "hex"}, {"diversity_scale": "batch"}])
def test_bad_option_values_raise(bad):
    tokens, cls_attn = _inputs(4, 1, 64, 8)
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=f"{name}={value!r}"):
        prune(tokens, cls_attn, 8, mode="improved", **bad)


def test_deterministic_batch_independent_and_dtype_preserving():
    tokens, cls_attn = _inputs(5, 3, 576, 32)
    kept, index = prune(tokens, cls_attn, 64, mode="improved")
    again = prune(tokens, cls_attn, 64, mode="improved")
    assert torch.equal(index, again[1]) and torch.equal(kept, again[0])
    for b in range(3):
        kept_b, index_b = prune(tokens[b:b + 1], cls_attn[b:b + 1], 64, mode="improved")
        assert torch.equal(index_b[0], index[b]) and torch.equal(kept_b[0], kept[b])
    for dtype in (torch.float16, torch.bfloat16):
        low = tokens.to(dtype)
        kept_low, index_low = prune(low, cls_attn, 64, mode="improved")
        assert kept_low.dtype == dtype
        assert torch.equal(index_low, prune(low.float(), cls_attn, 64, mode="improved")[1])
        _assert_k_distinct_in_raster_order(low, kept_low, index_low, 64)


def test_config_options_reach_the_pruner():
    tokens, cls_attn = _inputs(6, 2, 576, 16)
    config = PruningConfig(keep=64, mode="improved", rank_by="attention", diversity_scale="image")
    _, index = prune_visual_tokens(tokens, cls_attn, config)
    _, direct = prune(tokens, cls_attn, 64, mode="improved", rank_by="attention", diversity_scale="image")
    assert torch.equal(index, direct)


# ---- the options do what they say ----------------------------------------------------

@pytest.mark.parametrize("near_orthogonal", [False, True])
def test_combined_scores_match_the_spec_on_square_crops(near_orthogonal):
    tokens, cls_attn = _inputs(7, 1, 144, 144)
    if near_orthogonal:  # mean(var) ~ 1e-6: the diversity term is at its most sensitive
        tokens = torch.eye(144)[None] + 1e-3 * tokens
    table = square_crops((12, 12), 9, CPU)
    scores = score_crops(tokens, cls_attn, table, alpha=0.09, diversity_scale="crop", single_token_raw=False)
    for c in range(table.num_crops):
        cells = table.slot_index[c, table.valid[c]]
        expected = REF.reference_token_scores(tokens[0, cells], cls_attn[0, cells], 0.09)
        torch.testing.assert_close(scores.token[0, c, :cells.numel()], expected, rtol=1e-5, atol=1e-5)


def test_image_diversity_scale_lets_diversity_move_the_budget():
    # Flat attention and equal crops: with a per-crop scale every crop scores ~(1 + alpha) * mean(a)
    # and gets K / C. With one scale for the image, a crop whose similarity variance is higher
    # (here: duplicated tokens, var = 1/(n-1) from the zeroed diagonal) gets more.
    tokens, _ = _inputs(8, 1, 576, 64)
    table = square_crops((24, 24), 16, CPU)
    tokens[0, table.slot_index[0]] = tokens[0, 0].clone()
    cls_attn = torch.full((1, 576), 1 / 576)
    per_crop = _crop_counts(prune(tokens, cls_attn, 320, num_crops=16, mode="improved")[1][0], table)
    per_image = _crop_counts(prune(tokens, cls_attn, 320, num_crops=16, mode="improved", diversity_scale="image")[1][0], table)
    assert bool((per_crop == 20).all())
    assert per_image[0] > 20 and int(per_image.sum()) == 320


def test_raster_crop_shape_uses_the_released_chunks():
    tokens, cls_attn = _inputs(9, 1, 576, 16)
    _, index = prune(tokens, cls_attn, 64, mode="improved", crop_shape="raster", rank_by="attention")
    chunks = raster_chunks(576, 16, CPU)
    scores = score_crops(tokens, cls_attn, chunks, alpha=0.09, single_token_raw=False)
    alloc = waterfill_allocation(scores.crop, chunks.sizes, 64)
    assert torch.equal(_crop_counts(index[0], chunks), alloc[0])
    for c in range(16):  # inside a chunk: the top-attention tokens
        cells = chunks.slot_index[c]
        top = cells[cls_attn[0, cells].topk(int(alloc[0, c])).indices].sort().values
        assert torch.equal(index[0][(index[0] >= cells[0]) & (index[0] <= cells[-1])], top)
