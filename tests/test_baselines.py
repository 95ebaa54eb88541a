"""Method-specific behaviour of the baseline pruners (cls_topk, random, divprune, visionzip,
fastv), checked against small independent re-computations."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from holov_patches import PruningConfig, get_pruner, list_pruners, prune_visual_tokens
from holov_patches.methods import divprune as divprune_module
from holov_patches.methods import fastv as fastv_module
from holov_patches.methods import visionzip_projected as visionzip_module
from holov_patches.registry import get_entry


def _inputs(batch=2, num=64, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num, dim, generator=gen), torch.softmax(2 * torch.randn(batch, num, generator=gen), -1)


def _cosine_distances(x):  # x [N, D] -> [N, N]
    unit = F.normalize(x.double(), dim=-1)
    return 1 - unit @ unit.T


def _min_pairwise_distance(x):
    dist = _cosine_distances(x)
    return dist[~torch.eye(len(x), dtype=torch.bool)].min().item()


def _clustered(clusters=8, per_cluster=8, dim=32, spread=0.05, seed=0):
    """clusters x per_cluster tokens, shuffled; returns tokens [1, N, D] and cluster id [N]."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=gen), dim=-1)
    ids = torch.arange(clusters).repeat_interleave(per_cluster)[torch.randperm(clusters * per_cluster, generator=gen)]
    tokens = centres[ids] + spread * torch.randn(len(ids), dim, generator=gen) / dim ** 0.5
    return tokens[None], ids


# ---- registry and docs ------------------------------------------------------------------

def test_every_method_lives_in_a_file_named_like_its_key_and_names_its_paper():
    for name in list_pruners():
        module = importlib.import_module(get_pruner(name).__module__)
        assert module.__name__.rsplit(".", 1)[-1] == name
        assert "arXiv" in module.__doc__ or name == "random", f"{name}: the module docstring must name the paper"


# ---- cls_topk ---------------------------------------------------------------------------

def test_cls_topk_keeps_the_true_top_k_in_raster_order():
    tokens, cls_attn = _inputs()
    kept, index = get_pruner("cls_topk")(tokens, cls_attn, 10)
    for row in range(2):
        expected = sorted(torch.argsort(cls_attn[row], descending=True)[:10].tolist())
        assert index[row].tolist() == expected
        assert torch.equal(kept[row], tokens[row, expected])


def test_cls_topk_ignores_token_content():
    tokens, cls_attn = _inputs()
    _, index = get_pruner("cls_topk")(tokens, cls_attn, 10)
    _, index_other = get_pruner("cls_topk")(torch.randn_like(tokens), cls_attn, 10)
    assert torch.equal(index, index_other)


# ---- random -----------------------------------------------------------------------------

def test_random_is_seeded_and_leaves_the_global_rng_alone():
    tokens, cls_attn = _inputs()
    state = torch.get_rng_state()
    _, a = get_pruner("random")(tokens, cls_attn, 8, seed=1)
    _, b = get_pruner("random")(tokens, cls_attn, 8, seed=1)
    _, c = get_pruner("random")(tokens, cls_attn, 8, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[0], a[1]), "the subset depends on (seed, N, K) only, so every image gets the same one"


def test_random_positions_are_uniform_over_seeds():
    tokens, cls_attn = _inputs(batch=1, num=16)
    counts = torch.zeros(16)
    seeds = 400
    for seed in range(seeds):
        _, index = get_pruner("random")(tokens, cls_attn, 4, seed=seed)
        counts[index[0]] += 1
    # Each position is kept with probability 4/16: 100 of 400, binomial std ~8.7.
    assert bool((counts - seeds / 4).abs().max() < 40), counts.tolist()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0", 2**63])
def test_random_rejects_bad_seed(bad):
    tokens, cls_attn = _inputs()
    with pytest.raises(ValueError, match="seed"):
        get_pruner("random")(tokens, cls_attn, 8, seed=bad)


# ---- divprune ---------------------------------------------------------------------------

def _reference_divprune(x, keep):
    """Plain-loop greedy max-min on one image x [N, D]: the picks in pick order."""
    dist = _cosine_distances(x)
    num = len(x)
    first = max(range(num), key=lambda i: (min(dist[i, j].item() for j in range(num) if j != i), -i))
    picks = [first]
    while len(picks) < keep:
        rest = [j for j in range(num) if j not in picks]
        picks.append(max(rest, key=lambda j: (min(dist[s, j].item() for s in picks), -j)))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divprune_matches_a_plain_loop_reference(seed):
    tokens, cls_attn = _inputs(batch=2, num=24, dim=8, seed=seed)
    picks = divprune_module.greedy_max_min(divprune_module.cosine_distance_matrix(tokens), 7)
    _, index = get_pruner("divprune")(tokens, cls_attn, 7)
    for row in range(2):
        expected = _reference_divprune(tokens[row], 7)
        assert picks[row].tolist() == expected
        assert index[row].tolist() == sorted(expected)


def test_divprune_starts_from_the_most_isolated_token():
    tokens, ids = _clustered(clusters=4, per_cluster=6)
    outlier = 13
    tokens[0, outlier] = F.normalize(torch.randn(tokens.shape[-1], generator=torch.Generator().manual_seed(9)), dim=0)
    picks = divprune_module.greedy_max_min(divprune_module.cosine_distance_matrix(tokens), 3)
    assert picks[0, 0].item() == outlier


def test_divprune_is_more_diverse_than_random_on_clustered_tokens():
    tokens, ids = _clustered()
    cls_attn = torch.full((1, tokens.shape[1]), 1.0 / tokens.shape[1])
    kept, index = get_pruner("divprune")(tokens, cls_attn, 8)
    assert sorted(ids[index[0]].tolist()) == list(range(8)), "one token per cluster"
    diverse = _min_pairwise_distance(kept[0])
    random_spreads = [_min_pairwise_distance(get_pruner("random")(tokens, cls_attn, 8, seed=s)[0][0]) for s in range(20)]
    assert all(diverse >= r - 1e-9 for r in random_spreads)
    assert diverse > 3 * sum(random_spreads) / len(random_spreads)


def test_divprune_keeps_k_distinct_tokens_even_when_all_tokens_are_equal():
    tokens = torch.ones(2, 30, 8)
    kept, index = get_pruner("divprune")(tokens, torch.rand(2, 30), 12)
    for row in range(2):
        assert index[row].unique().numel() == 12


def test_divprune_rejects_non_finite_tokens():
    tokens, cls_attn = _inputs()
    tokens[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="tokens"):
        get_pruner("divprune")(tokens, cls_attn, 8)


# ---- visionzip_projected (VisionZip's idea after the projector) -------------------------

@pytest.mark.parametrize("keep,contextual", [(64, 10), (128, 20), (192, 30), (32, 5), (16, 3), (2, 1), (1, 1)])
def test_visionzip_default_split_follows_the_paper_ratio(keep, contextual):
    assert visionzip_module.default_contextual(keep) == contextual


def _reference_visionzip(x, attn, keep, contextual, merge):
    """One image: {position: expected kept vector} by plain loops over the VisionZip steps."""
    num = len(x)
    dominant = sorted(torch.argsort(attn, descending=True)[:keep - contextual].tolist())
    remaining = [i for i in range(num) if i not in dominant]
    step = max(1, len(remaining) // contextual)
    targets = [remaining[i] for i in range(0, len(remaining), step)][:contextual]
    groups = {t: [] for t in targets}
    for i in remaining:
        if i not in groups:
            sims = [F.cosine_similarity(x[i], x[t], dim=0).item() for t in targets]
            groups[targets[sims.index(max(sims))]].append(i)
    expected = {i: x[i] for i in dominant}
    for t, members in groups.items():
        if merge == "mean":
            expected[t] = x[[t] + members].mean(dim=0)
        else:
            expected[t] = x[t] + (x[members].mean(dim=0) if members else 0)
    return expected


@pytest.mark.parametrize("merge", ["mean", "target_plus_mean"])
@pytest.mark.parametrize("keep,contextual", [(16, None), (9, 4), (5, 5)])
def test_visionzip_contextual_tokens_are_means_of_their_groups(keep, contextual, merge):
    tokens, cls_attn = _inputs(batch=2, num=64, dim=16, seed=4)
    kept, index = get_pruner("visionzip_projected")(tokens, cls_attn, keep, contextual=contextual, merge=merge)
    num_ctx = visionzip_module.default_contextual(keep) if contextual is None else contextual
    for row in range(2):
        expected = _reference_visionzip(tokens[row], cls_attn[row], keep, num_ctx, merge)
        assert index[row].tolist() == sorted(expected)
        for slot, position in enumerate(index[row].tolist()):
            torch.testing.assert_close(kept[row, slot], expected[position], rtol=1e-5, atol=1e-5)


def test_visionzip_without_contextual_tokens_is_cls_topk():
    tokens, cls_attn = _inputs()
    zipped = get_pruner("visionzip_projected")(tokens, cls_attn, 12, contextual=0)
    topk = get_pruner("cls_topk")(tokens, cls_attn, 12)
    assert torch.equal(zipped[0], topk[0]) and torch.equal(zipped[1], topk[1])


def test_visionzip_keeps_the_dominant_tokens_unchanged():
    tokens, cls_attn = _inputs()
    kept, index = get_pruner("visionzip_projected")(tokens, cls_attn, 32)  # 27 dominant + 5 contextual
    for row in range(2):
        dominant = torch.argsort(cls_attn[row], descending=True)[:27].tolist()
        slots = [index[row].tolist().index(p) for p in dominant]
        assert torch.equal(kept[row, slots], tokens[row, dominant])


@pytest.mark.parametrize("options", [{"contextual": -1}, {"contextual": 13}, {"contextual": 1.5},
                                     {"contextual": True}, {"merge": "sum"}])
def test_visionzip_rejects_bad_options(options):
    tokens, cls_attn = _inputs()
    with pytest.raises(ValueError, match=next(iter(options))):
        get_pruner("visionzip_projected")(tokens, cls_attn, 12, **options)


def test_visionzip_options_reach_it_through_the_config():
    tokens, cls_attn = _inputs()
    via_config = prune_visual_tokens(tokens, cls_attn, PruningConfig(method="visionzip_projected", keep=12, options={"contextual": 0}))
    direct = get_pruner("cls_topk")(tokens, cls_attn, 12)
    assert torch.equal(via_config[1], direct[1])


# ---- fastv ------------------------------------------------------------------------------

def test_fastv_registers_as_an_llm_stage_method():
    assert get_entry("fastv").stage == "llm"
    assert "fastv" in list_pruners(stage="llm") and "fastv" not in list_pruners(stage="pre_llm")
    assert (fastv_module.DEFAULT_LAYER, fastv_module.DEFAULT_RATIO) == (2, 0.5)
    assert PruningConfig(method="fastv", ratio=fastv_module.DEFAULT_RATIO).resolve_keep(576) == 288
    tokens, cls_attn = _inputs()
    with pytest.raises(ValueError, match="inside the LLM"):
        prune_visual_tokens(tokens, cls_attn, PruningConfig(method="fastv", keep=8))


def test_fastv_select_returns_the_sorted_top_k():
    _, attn = _inputs(batch=3, num=50)
    kept = get_pruner("fastv")(attn, 9)
    assert kept.shape == (3, 9) and kept.dtype == torch.int64
    for row in range(3):
        assert kept[row].tolist() == sorted(torch.argsort(attn[row], descending=True)[:9].tolist())
    assert torch.equal(get_pruner("fastv")(attn, 50), torch.arange(50).expand(3, 50))
    assert torch.equal(get_pruner("fastv")(attn, 80), torch.arange(50).expand(3, 50))


@pytest.mark.parametrize("keep", [0, -3, 1.0, True])
def test_fastv_rejects_bad_keep(keep):
    with pytest.raises(ValueError, match="keep"):
        get_pruner("fastv")(torch.rand(2, 10), keep)


@pytest.mark.parametrize("attn", [torch.rand(10), torch.rand(2, 3, 4), torch.tensor([[0.1, float("nan")]]),
                                  torch.ones(2, 5, dtype=torch.long)])
def test_fastv_rejects_bad_attention(attn):
    with pytest.raises(ValueError, match="last_token_attn"):
        get_pruner("fastv")(attn, 1)


def test_fastv_picks_do_not_depend_on_batch_neighbours():
    _, attn = _inputs(batch=4, num=30)
    together = get_pruner("fastv")(attn, 7)
    alone = torch.cat([get_pruner("fastv")(attn[i:i + 1], 7) for i in range(4)])
    assert torch.equal(together, alone)

