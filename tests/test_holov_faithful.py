"""HoloV faithful mode: same kept tokens, order and output as the released code (our loop reference),
hand-worked cases from the released code's rules (docs/holov.md), input checks and the properties of a pruner."""

import pytest
import torch

import reference_holov_loop as REF  # tests/ is on sys.path under pytest
from holov_patches import PruningConfig, get_pruner, prune_visual_tokens
from holov_patches.methods.holov import prune, raster_chunks, score_crops
from benchmarks.op_count import count_ops

reference = REF.reference_holov_loop


def _inputs(seed, batch, num_tokens, dim, attn="uniform"):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, num_tokens, dim, generator=g)
    if attn == "uniform":
        cls_attn = torch.rand(batch, num_tokens, generator=g)
    elif attn == "softmax":
        cls_attn = torch.randn(batch, num_tokens, generator=g).softmax(-1)
    elif attn == "peaked":
        cls_attn = (8.0 * torch.randn(batch, num_tokens, generator=g)).softmax(-1)
    else:
        raise AssertionError(attn)
    return tokens, cls_attn


def _assert_same_as_reference(tokens, cls_attn, keep, num_crops=None, alpha=0.09):
    kept, index = prune(tokens, cls_attn, keep, num_crops=num_crops, alpha=alpha)
    ref_kept, ref_index = reference(tokens, cls_attn, keep, num_crops=num_crops, alpha=alpha)
    assert index.dtype == torch.int64
    assert torch.equal(index, ref_index), (index, ref_index)
    assert torch.equal(kept, ref_kept)


# ---- agreement with the loop reference -------------------------------------------

@pytest.mark.parametrize("seed", range(60))
def test_matches_reference_on_random_shapes(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    batch = int(torch.randint(1, 4, (1,), generator=g))
    num_tokens = int(torch.randint(1, 120, (1,), generator=g))
    dim = int(torch.randint(1, 48, (1,), generator=g))
    keep = int(torch.randint(1, num_tokens + 1, (1,), generator=g))
    num_crops = int(torch.randint(1, 40, (1,), generator=g))
    tokens, cls_attn = _inputs(seed, batch, num_tokens, dim)
    _assert_same_as_reference(tokens, cls_attn, keep, num_crops)
    _assert_same_as_reference(tokens, cls_attn, keep, None)


@pytest.mark.parametrize("keep", [64, 128, 192])
@pytest.mark.parametrize("attn", ["softmax", "peaked"])
def test_matches_reference_at_llava_sizes(keep, attn):
    tokens, cls_attn = _inputs(keep, 2, 576, 64, attn)
    _assert_same_as_reference(tokens, cls_attn, keep)


def test_matches_reference_with_a_single_hot_token():
    tokens, cls_attn = _inputs(3, 2, 576, 32)
    cls_attn = cls_attn * 1e-4
    cls_attn[:, 100] = 0.9
    _assert_same_as_reference(tokens, cls_attn, 64)


@pytest.mark.parametrize("kind", ["all_equal", "pairs"])
def test_matches_reference_with_duplicated_tokens(kind):
    tokens, cls_attn = _inputs(5, 2, 96, 16)
    if kind == "all_equal":
        tokens = tokens[:, :1].expand(-1, 96, -1).clone()
    else:
        tokens = tokens[:, ::2].repeat_interleave(2, dim=1)
    for keep, num_crops in [(8, 4), (30, 7), (90, 5)]:
        _assert_same_as_reference(tokens, cls_attn, keep, num_crops)


@pytest.mark.parametrize("num_tokens,num_crops", [(50, 1), (50, 3), (50, 7), (50, 49), (100, 7), (97, 16)])
def test_matches_reference_with_k_close_to_n(num_tokens, num_crops):
    tokens, cls_attn = _inputs(num_tokens + num_crops, 2, num_tokens, 12)
    for keep in (num_tokens - 1, num_tokens - 2, num_tokens - 5):
        _assert_same_as_reference(tokens, cls_attn, keep, num_crops)
        _assert_same_as_reference(tokens, cls_attn, keep, None)


@pytest.mark.parametrize("num_tokens", [1, 2, 3])
def test_matches_reference_on_tiny_images(num_tokens):
    tokens, cls_attn = _inputs(num_tokens, 3, num_tokens, 4)
    for keep in range(1, num_tokens + 2):
        for num_crops in range(1, 6):
            _assert_same_as_reference(tokens, cls_attn, keep, num_crops)


@pytest.mark.parametrize("num_crops", [13, 40, 41, 200])
def test_matches_reference_when_crops_exceed_or_do_not_divide_n(num_crops):
    tokens, cls_attn = _inputs(num_crops, 2, 40, 8)
    for keep in (1, 5, 17, 39):
        _assert_same_as_reference(tokens, cls_attn, keep, num_crops)


def _chunk_counts(index, num_tokens, num_crops):
    """How many kept positions come from each chunk (zero pads not counted)."""
    table = raster_chunks(num_tokens, num_crops, torch.device("cpu"))
    owner = torch.empty(num_tokens, dtype=torch.long)
    owner[table.slot_index[table.valid]] = torch.arange(table.num_crops)[:, None].expand_as(table.valid)[table.valid]
    return torch.bincount(owner[index[index >= 0]], minlength=table.num_crops)


@pytest.mark.parametrize("keep,num_crops", [(70, 16), (130, 16), (200, 7), (500, 3)])
def test_constant_attention_matches_reference_up_to_ties(keep, num_crops):
    # All attention equal: every chunk scores (1 + alpha) * mean(a) up to ~1e-7 relative, below
    # float32 resolution, so rounding and torch.topk's tie order decide WHICH chunks get the
    # remainder, and topk's choice among equal attention decides the tokens. With K / P far
    # from an integer the floors are unambiguous, hence so is the multiset of chunk budgets.
    tokens, _ = _inputs(9, 2, 576, 32)
    cls_attn = torch.full((2, 576), 1.0 / 576)
    _, index = prune(tokens, cls_attn, keep, num_crops=num_crops)
    _, ref_index = reference(tokens, cls_attn, keep, num_crops=num_crops)
    assert torch.equal(index < 0, ref_index < 0)
    for b in range(2):
        ours, theirs = _chunk_counts(index[b], 576, num_crops), _chunk_counts(ref_index[b], 576, num_crops)
        assert torch.equal(ours.sort().values, theirs.sort().values)
        assert set(ours.tolist()) == {keep // num_crops, keep // num_crops + 1}


@pytest.mark.parametrize("num_crops", [1, 5, 16])
@pytest.mark.parametrize("near_orthogonal", [False, True])
def test_token_and_chunk_scores_match_the_spec(num_crops, near_orthogonal):
    # Near-orthogonal tokens make mean(var) ~ 1e-6, where the diversity term is not negligible.
    tokens, cls_attn = _inputs(num_crops, 2, 100, 100, "softmax")
    if near_orthogonal:
        tokens = torch.eye(100).expand(2, -1, -1) + 1e-3 * tokens
    table = raster_chunks(100, num_crops, torch.device("cpu"))
    scores = score_crops(tokens, cls_attn, table, alpha=0.09)
    for b in range(2):
        for c, (start, size) in enumerate(REF.reference_chunks(100, num_crops)):
            x, a = tokens[b, start:start + size], cls_attn[b, start:start + size]
            torch.testing.assert_close(scores.token[b, c, :size], REF.reference_token_scores(x, a, 0.09), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(scores.crop[b, c], REF.reference_chunk_score(x, a, 0.09), rtol=1e-5, atol=0)


# ---- hand-worked cases ---------------------------------------------------------------

def _orthogonal_tokens(num_tokens):
    # Mutually orthogonal tokens: S = 0, so var = 0 and every token score is exactly 1000 * attn.
    return 3.0 * torch.eye(num_tokens)[None]


def test_hand_worked_zero_pads():
    # N=12, P=3: chunks {0-3}, {4-7}, {8-11}. Chunk scores = 1000 * mean attn = 250, 25, 20.
    # w = (250, 25, 20) / 295 -> w*K for K=8: 6.78, 0.68, 0.54 -> floor 6, 0, 0; r = 2 goes to
    # the two largest w: alloc = 7, 1, 0. Chunk 0 (4 tokens) is taken whole in raster order,
    # chunk 1 gives its top-attention token 7; 5 picks < 8, so 3 zero vectors follow.
    attn = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.01, 0.02, 0.03, 0.04, 0.02, 0.01, 0.03, 0.02]])
    tokens = _orthogonal_tokens(12)
    kept, index = prune(tokens, attn, 8, num_crops=3)
    assert index.tolist() == [[0, 1, 2, 3, 7, -1, -1, -1]]
    assert torch.equal(kept[0, :5], tokens[0, [0, 1, 2, 3, 7]])
    assert torch.count_nonzero(kept[0, 5:]) == 0


def test_hand_worked_topk_order_inside_a_chunk():
    # Same chunks; scores 1000 * mean = 62.5, 25, 212.5 -> w*K for K=4 with sum 300:
    # 0.83, 0.33, 2.83 -> floor 0, 0, 2; r = 2 -> chunks 2 and 0 get one more: alloc 1, 0, 3.
    # Chunk 0 gives token 1 (0.1); chunk 2 gives its top 3 in descending attention: 9, 11, 8.
    attn = torch.tensor([[0.05, 0.1, 0.05, 0.05, 0.02, 0.03, 0.02, 0.03, 0.2, 0.4, 0.0, 0.25]])
    _, index = prune(_orthogonal_tokens(12), attn, 4, num_crops=3)
    assert index.tolist() == [[1, 9, 11, 8]]


def test_hand_worked_truncation():
    # The released code truncates when the picks exceed K, which needs a negative score:
    # scores 350, -200, 15 (sum 165) -> w*K for K=2: 4.24, -2.42, 0.18 -> floor 4, -3, 0,
    # r = 1 -> chunk 0: alloc 5, -3, 0. Chunk 0 (4 tokens) is taken whole, truncated to 2.
    attn = torch.tensor([[0.5, 0.4, 0.3, 0.2, -0.2, -0.2, -0.2, -0.2, 0.01, 0.01, 0.02, 0.02]])
    _, index = prune(_orthogonal_tokens(12), attn, 2, num_crops=3)
    assert index.tolist() == [[0, 1]]


def test_hand_worked_single_token_chunks_use_raw_attention():
    # N=3, P=2: chunks {0, 1} and {2}. Chunk 0 scores 1000 * mean attn (orthogonal tokens)
    # = 150, chunk 1 scores its raw attention 0.9 (not x1000): w*K for K=2 = 1.99, 0.01
    # -> floor 1, 0; r = 1 -> chunk 0 gets 2 = its size: tokens 0, 1; token 2 is dropped
    # even though it has by far the highest attention.
    attn = torch.tensor([[0.1, 0.2, 0.9]])
    _, index = prune(_orthogonal_tokens(3), attn, 2, num_crops=2)
    assert index.tolist() == [[0, 1]]


# ---- properties ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["faithful", "improved"])
def test_keep_at_least_n_returns_every_token_in_order(mode):
    tokens, cls_attn = _inputs(0, 2, 16, 8)
    for keep in (16, 17, 100):
        kept, index = prune(tokens, cls_attn, keep, mode=mode)
        assert torch.equal(kept, tokens)
        assert torch.equal(index, torch.arange(16).expand(2, 16))


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "4", None])
def test_bad_keep_raises_naming_the_value(bad):
    tokens, cls_attn = _inputs(0, 1, 16, 4)
    with pytest.raises(ValueError, match=f"keep={bad!r}"):
        prune(tokens, cls_attn, bad)


@pytest.mark.parametrize("case,match", [
    ("tokens_2d", "tokens must be"), ("tokens_int", "tokens must be"), ("attn_shape", r"cls_attn shape \(1, 15\)"),
    ("attn_nan", "non-finite value \\(nan\\)"), ("attn_inf", "non-finite value \\(inf\\)"),
    ("crops_zero", "num_crops=0"), ("crops_float", "num_crops=2.5"), ("grid", r"grid=\(3, 5\)"),
    ("mode", "mode='fast'"), ("alpha", "alpha=-0.1"), ("alpha_nan", "alpha=nan"),
    ("faithful_option", "only apply to mode='improved'"), ("unknown_option", "unknown HoloV option 'topk'"),
])
def test_bad_input_raises(case, match):
    tokens, cls_attn = _inputs(0, 1, 16, 4)
    kwargs = {}
    if case == "tokens_2d":
        tokens = tokens[0]
    elif case == "tokens_int":
        tokens = tokens.long()
    elif case == "attn_shape":
        cls_attn = cls_attn[:, :15]
    elif case == "attn_nan":
        cls_attn[0, 3] = float("nan")
    elif case == "attn_inf":
        cls_attn[0, 3] = float("inf")
    else:
        kwargs = {"crops_zero": {"num_crops": 0}, "crops_float": {"num_crops": 2.5}, "grid": {"grid": (3, 5)},
                  "mode": {"mode": "fast"}, "alpha": {"alpha": -0.1}, "alpha_nan": {"alpha": float("nan")},
                  "faithful_option": {"rank_by": "combined"}, "unknown_option": {"topk": 3}}[case]
    with pytest.raises(ValueError, match=match):
        prune(tokens, cls_attn, 4, **kwargs)


def test_deterministic_and_batch_rows_independent():
    tokens, cls_attn = _inputs(11, 4, 576, 32, "softmax")
    kept, index = prune(tokens, cls_attn, 64)
    kept2, index2 = prune(tokens, cls_attn, 64)
    assert torch.equal(index, index2) and torch.equal(kept, kept2)
    for b in range(4):
        kept_b, index_b = prune(tokens[b:b + 1], cls_attn[b:b + 1], 64)
        assert torch.equal(index_b[0], index[b]) and torch.equal(kept_b[0], kept[b])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_keeps_its_dtype_and_scores_in_float32(dtype):
    tokens, cls_attn = _inputs(12, 2, 144, 16, "softmax")
    tokens = tokens.to(dtype)
    kept, index = prune(tokens, cls_attn.to(dtype), 16)
    assert kept.dtype == dtype
    _, index32 = prune(tokens.float(), cls_attn.to(dtype).float(), 16)
    assert torch.equal(index, index32)
    assert torch.equal(kept, tokens.gather(1, index[..., None].expand(-1, -1, 16)))


def test_registered_and_reached_through_the_config():
    tokens, cls_attn = _inputs(13, 2, 576, 16, "softmax")
    assert get_pruner("holov") is prune
    kept, index = prune_visual_tokens(tokens, cls_attn, PruningConfig.from_ratio(0.778))
    ref_kept, ref_index = reference(tokens, cls_attn, 128)
    assert torch.equal(index, ref_index) and torch.equal(kept, ref_kept)


# ---- the diversity term does not change the released code's choice -------------------

def test_diversity_term_cancels_in_faithful_mode():
    # a >= 0 and var >= 0, so alpha * scale * mean(var) = alpha * mean(a) * mean(var) / (mean(var) + 1e-6)
    # ~= alpha * mean(a): every chunk score is ~(1 + alpha) * mean(a), and picks use raw attention.
    tokens, cls_attn = _inputs(14, 2, 576, 64, "softmax")
    other_tokens, _ = _inputs(15, 2, 576, 64)
    table = raster_chunks(576, 16, torch.device("cpu"))
    scores = score_crops(tokens, cls_attn, table, alpha=0.09)
    mean_a = 1e3 * cls_attn.view(2, 16, 36).mean(-1)
    torch.testing.assert_close(scores.crop, 1.09 * mean_a, rtol=1e-3, atol=0)
    _, index = prune(tokens, cls_attn, 64)
    for feats, alpha in [(other_tokens, 0.09), (tokens, 0.0), (tokens, 5.0), (tokens[:, :, :1].expand(-1, -1, 64), 0.09)]:
        assert torch.equal(prune(feats.contiguous(), cls_attn, 64, alpha=alpha)[1], index)


def test_diversity_term_changes_the_choice_in_improved_mode():
    # Nearly flat attention: only the combined ranking inside a crop can tell tokens apart.
    tokens, _ = _inputs(16, 1, 576, 64)
    other_tokens, _ = _inputs(17, 1, 576, 64)
    cls_attn = (1.0 + 1e-2 * torch.rand(1, 576, generator=torch.Generator().manual_seed(18))) / 576
    _, index = prune(tokens, cls_attn, 64, mode="improved")
    _, other = prune(other_tokens, cls_attn, 64, mode="improved")
    assert not torch.equal(index, other)
    _, by_attention = prune(tokens, cls_attn, 64, mode="improved", rank_by="attention")
    _, by_attention_other = prune(other_tokens, cls_attn, 64, mode="improved", rank_by="attention")
    assert torch.equal(by_attention, by_attention_other)


# ---- vectorisation -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["faithful", "improved"])
def test_dispatches_20x_fewer_ops_than_the_loop_at_batch_8(mode):
    tokens, cls_attn = _inputs(19, 8, 576, 32, "softmax")
    ours = count_ops(lambda: prune(tokens, cls_attn, 64, mode=mode))
    loop = count_ops(lambda: reference(tokens, cls_attn, 64))
    assert loop >= 20 * ours, (ours, loop)
    tokens1, cls_attn1 = tokens[:1], cls_attn[:1]
    single = count_ops(lambda: prune(tokens1, cls_attn1, 64, mode=mode))
    if mode == "improved":
        assert single == ours  # independent of the batch size
    else:
        # Faithful mode makes one torch.topk call per distinct (chunk size, budget) pair and per
        # distinct budget remainder, as the released code's tie order needs (_topk_picks,
        # released_allocation): eight copies of one image share those groups, so the count
        # does not grow with the batch (it may differ by a few free view ops).
        tokens8, cls_attn8 = tokens1.repeat(8, 1, 1), cls_attn1.repeat(8, 1)
        copies = count_ops(lambda: prune(tokens8, cls_attn8, 64, mode=mode))
        assert copies <= single
