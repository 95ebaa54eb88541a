"""VisPruner (tower stage): hand-worked cases, and a plain-loop reference written here from
the authors' ``encode_images`` (Theia-4869/VisPruner, llava/model/llava_arch.py) that
imports nothing from the code under test."""
from __future__ import annotations

import math

import pytest
import torch

from holov_patches import PruningConfig, get_pruner, prune_visual_tokens
from holov_patches.registry import get_entry


def vispruner_reference(tokens, cls_attn, keep, important_ratio=0.5, max_drop=8):
    """One image at a time, Python lists: tokens [B, N, C] float, cls_attn [B, N] -> sorted kept indices per image."""
    out = []
    for feats, attn in zip(tokens.double(), cls_attn.double().tolist()):
        num = len(attn)
        if keep >= num:
            out.append(list(range(num)))
            continue
        n_imp = int(keep * important_ratio)
        n_div = keep - n_imp
        ranked = sorted(range(num), key=lambda n: -attn[n])  # descending, ties: lower position first
        important, residual = ranked[:n_imp], ranked[n_imp:]
        unit = torch.stack([feats[n] / math.sqrt(float((feats[n] * feats[n]).sum())) for n in range(num)])
        while n_div > 0:
            length = len(residual)
            drop = min(max_drop, length - n_div)
            if drop <= 0:
                break
            set_a, set_b = residual[0::2], residual[1::2]
            unit_b = unit[set_b]  # [|B|, C]
            scores = [max((unit_b @ unit[a]).tolist()) for a in set_a]  # each A patch: its best cosine to B
            by_score = sorted(range(len(set_a)), key=lambda i: -scores[i])  # most similar first, stable
            residual = [set_a[i] for i in by_score[drop:]] + set_b
        out.append(sorted(important + (residual if n_div > 0 else [])))
    return torch.tensor(out, dtype=torch.long)


def _unit_at(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def _hand_case():
    """7 patches; 0 and 1 have the most attention; the residual list, ranked by attention, is
    [6, 5, 4, 3, 2] with unit vectors at 0, 10, 90, 110 and 45 degrees."""
    angles = {2: 45, 3: 110, 4: 90, 5: 10, 6: 0}
    rows = [[1.0, 1.0], [-1.0, 2.0]] + [_unit_at(angles[n]) for n in range(2, 7)]
    tokens = torch.tensor([rows])
    cls_attn = torch.tensor([[0.9, 0.8, 0.01, 0.02, 0.03, 0.04, 0.05]])
    return tokens, cls_attn


def test_is_registered_in_the_tower_with_averaged_cls_attention():
    entry = get_entry("vispruner")
    assert entry.stage == "tower" and entry.needs == ("cls_attn",) and not entry.merges


def test_hand_worked_rounds_of_one_drop():
    # K = 4, r = 0.5: important {0, 1}; diverse 2 from [6, 5, 4, 3, 2], one drop per round.
    # Round 1: A = [6, 4, 2], B = [5, 3]; scores 6: cos10 = .985, 4: cos20 = .940, 2: cos35 = .819
    #          -> drop 6; list [4, 2, 5, 3] (survivors by score, then B).
    # Round 2: A = [4, 5], B = [2, 3]; 4: cos20 = .940, 5: cos35 = .819 -> drop 4; list [5, 2, 3].
    # Round 3: A = [5, 3], B = [2]; 5: cos35 = .819, 3: cos65 = .423 -> drop 5; list [3, 2].
    tokens, cls_attn = _hand_case()
    kept, index = get_pruner("vispruner")(tokens, cls_attn, 4, max_drop_per_round=1)
    assert index.tolist() == [[0, 1, 2, 3]]
    assert torch.equal(kept, tokens[:, [0, 1, 2, 3]])


def test_hand_worked_default_round_drops_at_most_all_of_set_a():
    # d = min(8, 5 - 2) = 3 but A = [6, 4, 2] holds 3: all of A goes, B = [5, 3] stays.
    tokens, cls_attn = _hand_case()
    _, index = get_pruner("vispruner")(tokens, cls_attn, 4)
    assert index.tolist() == [[0, 1, 3, 5]]


def test_hand_worked_list_order_is_by_attention_not_raster():
    # Same vectors, attention 2 > 6 > 4 > 5 > 3 among the residual: list [2, 6, 4, 5, 3].
    # Round 1: A = [2, 4, 3], B = [6, 5]; 2: cos35 = .819, 4: cos80 = .174, 3: cos100 = -.174
    #          -> drop 2; list [4, 3, 6, 5].
    # Round 2: A = [4, 6], B = [3, 5]; 4: cos20 = .940, 6: cos10 = .985 -> drop 6; list [4, 3, 5].
    # Round 3: A = [4, 5], B = [3]; 4: cos20 = .940, 5: cos100 = -.174 -> drop 4; list [5, 3].
    # (Listing the residual in raster order instead, [2, 3, 4, 5, 6], would keep {2, 3}.)
    tokens, _ = _hand_case()
    cls_attn = torch.tensor([[0.9, 0.8, 0.07, 0.03, 0.05, 0.04, 0.06]])
    _, index = get_pruner("vispruner")(tokens, cls_attn, 4, max_drop_per_round=1)
    assert index.tolist() == [[0, 1, 3, 5]]
    raster_attn = torch.tensor([[0.9, 0.8, 0.07, 0.06, 0.05, 0.04, 0.03]])
    assert get_pruner("vispruner")(tokens, raster_attn, 4, max_drop_per_round=1)[1].tolist() == [[0, 1, 2, 3]]


def test_attention_ties_go_to_the_lower_position():
    tokens = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(0))
    _, index = get_pruner("vispruner")(tokens, torch.full((1, 6), 1 / 6), 2, important_ratio=1.0)
    assert index.tolist() == [[0, 1]]


def test_ratio_one_is_top_attention_and_important_tokens_are_always_kept():
    gen = torch.Generator().manual_seed(1)
    tokens, cls_attn = torch.randn(2, 64, 8, generator=gen), torch.rand(2, 64, generator=gen)
    _, index = get_pruner("vispruner")(tokens, cls_attn, 10, important_ratio=1.0)
    assert torch.equal(index, cls_attn.topk(10, dim=1).indices.sort(dim=1).values)
    _, index = get_pruner("vispruner")(tokens, cls_attn, 10, important_ratio=0.5)  # int(10 * .5) = 5 important
    for row in range(2):
        assert set(cls_attn[row].topk(5).indices.tolist()) <= set(index[row].tolist())


def test_budget_split_floors_like_the_authors():
    # K = 5, r = 0.5: int(2.5) = 2 important, 3 diverse; r = 0.3, K = 10: int(3.0) = 3
    gen = torch.Generator().manual_seed(2)
    tokens, cls_attn = torch.randn(1, 40, 8, generator=gen), torch.rand(1, 40, generator=gen)
    for keep, ratio in [(5, 0.5), (10, 0.3), (7, 0.0)]:
        _, index = get_pruner("vispruner")(tokens, cls_attn, keep, important_ratio=ratio)
        assert torch.equal(index, vispruner_reference(tokens, cls_attn, keep, ratio))


@pytest.mark.parametrize("keep", [1, 2, 7, 20, 33, 63])
@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.0])
def test_matches_the_reference_loop(keep, ratio):
    gen = torch.Generator().manual_seed(keep)
    centres = torch.randn(6, 12, generator=gen)  # clustered features: near-duplicates matter
    tokens = centres[torch.randint(0, 6, (3, 64), generator=gen)] + 0.3 * torch.randn(3, 64, 12, generator=gen)
    cls_attn = torch.softmax(2 * torch.randn(3, 64, generator=gen), dim=-1)
    kept, index = get_pruner("vispruner")(tokens, cls_attn, keep, important_ratio=ratio)
    assert torch.equal(index, vispruner_reference(tokens, cls_attn, keep, ratio))
    assert torch.equal(kept, tokens.gather(1, index[..., None].expand(-1, -1, 12)))


@pytest.mark.parametrize("keep", [64, 128, 192])
def test_matches_the_reference_at_llava_size(keep):
    # the paper's budgets on 576 patches; N - K_imp is even, so the authors' code runs as written
    gen = torch.Generator().manual_seed(keep)
    tokens = torch.randn(1, 576, 32, generator=gen)
    tokens[:, 100:200] = tokens[:, 100:101] + 0.4 * torch.randn(1, 100, 32, generator=gen)  # a flat region
    cls_attn = torch.softmax(3 * torch.randn(1, 576, generator=gen), dim=-1)
    _, index = get_pruner("vispruner")(tokens, cls_attn, keep)
    assert torch.equal(index, vispruner_reference(tokens, cls_attn, keep))
    assert int(((index >= 100) & (index < 200)).sum()) < keep // 4  # the near-duplicates are thinned out


def test_half_precision_runs_in_the_tokens_dtype():
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randn(2, 64, 16, generator=gen).half()
    cls_attn = torch.softmax(torch.randn(2, 64, generator=gen), dim=-1).half()
    kept, index = get_pruner("vispruner")(tokens, cls_attn, 16)
    assert kept.dtype == torch.float16 and torch.equal(kept, tokens.gather(1, index[..., None].expand(-1, -1, 16)))
    assert index.unique(dim=1).shape == index.shape


def test_through_the_api_with_options():
    gen = torch.Generator().manual_seed(5)
    tokens, cls_attn = torch.randn(1, 36, 8, generator=gen), torch.rand(1, 36, generator=gen)
    config = PruningConfig(method="vispruner", keep=9, options={"important_ratio": 0.25, "max_drop_per_round": 2})
    _, index = prune_visual_tokens(tokens, cls_attn, config, grid=(6, 6))
    assert torch.equal(index, vispruner_reference(tokens, cls_attn, 9, 0.25, max_drop=2))


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_bad_important_ratio_raises(bad):
    tokens, cls_attn = torch.randn(1, 16, 4), torch.rand(1, 16)
    with pytest.raises(ValueError, match=r"important_ratio=.*\[0, 1\]"):
        get_pruner("vispruner")(tokens, cls_attn, 4, important_ratio=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_max_drop_per_round_raises(bad):
    tokens, cls_attn = torch.randn(1, 16, 4), torch.rand(1, 16)
    with pytest.raises(ValueError, match=r"max_drop_per_round=.*>= 1"):
        get_pruner("vispruner")(tokens, cls_attn, 4, max_drop_per_round=bad)


def test_zero_patch_raises_and_missing_attention_raises():
    tokens, cls_attn = torch.randn(1, 16, 4), torch.rand(1, 16)
    tokens[0, 5] = 0
    with pytest.raises(ValueError, match="all-zero patch"):
        get_pruner("vispruner")(tokens, cls_attn, 4)
    get_pruner("vispruner")(tokens, cls_attn, 4, important_ratio=1.0)  # no diverse tokens: no comparison
    with pytest.raises(ValueError, match="cls_attn"):
        get_pruner("vispruner")(torch.randn(1, 16, 4), None, 4)
