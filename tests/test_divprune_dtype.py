"""DivPrune computes its distances in the tokens' dtype by default, as the authors' LLaVA code
does (float16 under LLaVA's loader); ``options={"dtype": "float32"}`` is the exact variant.
Checked against a plain loop written from the released algorithm (github.com/vbdi/divprune,
LLaVA/llava/model/llava_arch.py: ``pairwise_cosine_similarity`` and ``DivPrune``)."""
from __future__ import annotations

import pytest
import torch

from holov_patches import PruningConfig, get_pruner, prune_visual_tokens
from holov_patches.methods import divprune


def _released_loop(x: torch.Tensor, keep: int) -> list:
    """One image x [N, D]. Distances as the released code: x / x.norm, torch.mm, 1 - sim, in
    x's dtype. Greedy on the exact values as Python floats: seed = the column whose
    second-smallest entry is largest; then the column whose minimum over the kept rows is
    largest (first on ties). Returns the kept positions, sorted."""
    unit = x / x.norm(dim=1, keepdim=True)
    dist = (1.0 - torch.mm(unit, unit.t())).tolist()
    num = len(dist)
    second = [sorted(dist[i][j] for i in range(num))[1] for j in range(num)]
    pick = max(range(num), key=lambda j: (second[j], -j))
    picks, nearest = [pick], list(dist[pick])
    while len(picks) < keep:
        pick = max(range(num), key=lambda j: (nearest[j], -j))
        picks.append(pick)
        nearest = [min(a, b) for a, b in zip(nearest, dist[pick])]
    return sorted(picks)


def _clustered(seed: int, num: int = 144, dim: int = 256, rank: int = 12) -> torch.Tensor:
    """[N, D] low-rank-plus-noise tokens (like projected patches: a few directions dominate)."""
    gen = torch.Generator().manual_seed(seed)
    coef = torch.randn(num, rank, generator=gen) * torch.rand(num, 1, generator=gen)
    return coef @ torch.randn(rank, dim, generator=gen) + 0.3 * torch.randn(num, dim, generator=gen)


CASES = [(seed, keep) for seed in range(8) for keep in (16, 36)]


def test_default_keeps_exactly_the_released_set_on_float16_tokens():
    disagree_in_float32 = 0
    for seed, keep in CASES:
        x = _clustered(seed).half()
        expected = _released_loop(x, keep)
        _, index = get_pruner("divprune")(x[None], None, keep)
        assert index[0].tolist() == expected, f"seed {seed}, keep {keep}"
        _, index32 = get_pruner("divprune")(x[None], None, keep, dtype="float32")
        disagree_in_float32 += index32[0].tolist() != expected
    # the cases are sensitive to the dtype: computing in float32 keeps other sets on some of them
    assert disagree_in_float32 >= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_option_is_the_released_loop_in_float32(seed):
    x = _clustered(seed).half()
    _, index = get_pruner("divprune")(x[None], None, 36, dtype="float32")
    assert index[0].tolist() == _released_loop(x.float(), 36)


def test_batched_default_equals_each_image_alone():
    x = torch.stack([_clustered(s) for s in range(3)]).half()
    _, index = get_pruner("divprune")(x, None, 20)
    for row in range(3):
        assert index[row].tolist() == _released_loop(x[row], 20)


def test_hand_worked_distances_and_picks_in_float16():
    # (3, 4) / 5 and (4, 3) / 5 round to (0.60009765625, 0.7998046875) and back; their dot
    # 2 * 0.600098 * 0.799805 = 0.959921 rounds to 0.9599609375, so d = 0.0400390625 in
    # float16, against 1 - 0.96 = 0.04 in float32.
    x = torch.tensor([[[3.0, 4.0], [4.0, 3.0]]])
    assert divprune.cosine_distance_matrix(x.half()).dtype == torch.float16
    assert divprune.cosine_distance_matrix(x.half())[0, 0, 1].item() == 0.0400390625
    assert abs(divprune.cosine_distance_matrix(x.half(), "float32")[0, 0, 1].item() - 0.04) < 1e-6
    # t0 = (1, 0), t1 = (0.96, 0.28), t2 = (0, 1), t3 = (-1, 0): d01 = 0.04, d02 = 1, d03 = 2,
    # d12 = 0.72, d13 = 1.96, d23 = 1. Seed: second-smallest per column = 0.04, 0.04, 0.72, 1
    # -> t3; then nearest-kept distances (2, 1.96, 1) -> t0; then min over {t3, t0} = (0.04, 1)
    # for t1, t2 -> t2.
    tokens = torch.tensor([[[1.0, 0.0], [0.96, 0.28], [0.0, 1.0], [-1.0, 0.0]]]).half()
    assert divprune.greedy_max_min(divprune.cosine_distance_matrix(tokens), 3)[0].tolist() == [3, 0, 2]
    kept, index = get_pruner("divprune")(tokens, None, 2)
    assert index[0].tolist() == [0, 3] and torch.equal(kept[0], tokens[0, [0, 3]])


def test_dtype_option_reaches_it_through_the_config_and_bad_values_raise():
    x = _clustered(3).half()[None]
    via_config = prune_visual_tokens(x, None, PruningConfig(method="divprune", keep=36, options={"dtype": "float32"}))
    assert via_config[1][0].tolist() == _released_loop(x[0].float(), 36)
    with pytest.raises(ValueError, match=r"dtype='float16' is not one of \('model', 'float32'\)"):
        get_pruner("divprune")(x, None, 8, dtype="float16")
    with pytest.raises(ValueError, match="dtype='bf16'"):
        divprune.cosine_distance_matrix(x, "bf16")
