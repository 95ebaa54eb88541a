"""DART's pure selection (holov_patches.methods.dart) against hand-worked cases and a plain
loop written from the released code (tests/reference_dart_loop.py)."""
from __future__ import annotations

import pytest
import torch

from holov_patches import PruningConfig, get_pruner, list_pruners
from holov_patches.methods import dart
from holov_patches.registry import get_entry
from reference_dart_loop import reference_dart

# ---- hand-worked ------------------------------------------------------------------------
# Six image tokens, two text tokens, one pivot of each kind. Key L1 norms: image (1, 1, 5, 1,
# 1, 1) -> image pivot t2; text (1, 3) -> text pivot x1. States: t0 = (1, 0), t1 = (1, 0.1),
# t2 = (0, 1), t3 = (-1, 0), t4 = (0, -1), t5 = (1, 1); x1 = (1, 0).
IMAGE_KEYS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [5.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
IMAGE_STATES = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
TEXT_KEYS = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
TEXT_STATES = torch.tensor([[0.0, 1.0], [1.0, 0.0]])


def _hand(keep, start, **kw):
    return get_pruner("dart")(IMAGE_KEYS[None], IMAGE_STATES[None], TEXT_KEYS[None], TEXT_STATES[None], keep,
                              image_positions=start + torch.arange(6)[None], text_positions=start + 6 + torch.arange(2)[None],
                              pivot_image=1, pivot_text=1, **kw)[0].tolist()


def test_hand_worked_image_pivot_visited_first():
    # pivots at positions {2, 7}: a set of 8 slots visits slot 2 then 7, image pivot first.
    # keep=4, P=2 -> 2 per pivot. t2's cosines to t0, t1, t3, t4, t5: 0, 0.0995, 0, -1, 0.707
    # -> t4, then t0 (tie with t3 at 0 goes to the lower position). x1 = (1, 0) against t1,
    # t3, t5: 0.995, -1, 0.707 -> t3, t5. Kept: pivot t2 + {t4, t0, t3, t5}.
    assert _hand(4, start=0) == [0, 2, 3, 4, 5]
    assert reference_dart(IMAGE_KEYS, IMAGE_STATES, TEXT_KEYS, TEXT_STATES, 4, 1, 1, start=0) == [0, 2, 3, 4, 5]


def test_hand_worked_text_pivot_visited_first():
    # image at 35..40: pivots at {37, 42}, slots 37 % 8 = 5 and 42 % 8 = 2: x1 goes first.
    # x1 against t0, t1, t3, t4, t5: 1, 0.995, -1, 0, 0.707 -> t3, t4; then t2 against t0,
    # t1, t5: 0, 0.0995, 0.707 -> t0, t1.
    assert _hand(4, start=35) == [0, 1, 2, 3, 4]
    assert reference_dart(IMAGE_KEYS, IMAGE_STATES, TEXT_KEYS, TEXT_STATES, 4, 1, 1, start=35) == [0, 1, 2, 3, 4]


def test_hand_worked_exact_budget():
    # keep=4 exactly: the image pivot + 3 more, 2 for the first visited pivot (t2: t4, t0) and
    # 1 for the second (x1 against t1, t3, t5: t3).
    assert _hand(4, start=0, budget="exact") == [0, 2, 3, 4]


def test_released_pivot_order_is_a_python_set_of_the_positions():
    assert dart.released_pivot_order([2, 7]) == [0, 1]
    assert dart.released_pivot_order([37, 42]) == [1, 0]  # slots 5 and 2
    assert dart.released_pivot_order([9, 2]) == [0, 1]  # slots 1 and 2: not by value
    assert dart.released_pivot_order([10, 33, 40]) == [2, 1, 0]  # slots 2, 1, 0
    with pytest.raises(ValueError, match="distinct"):
        dart.released_pivot_order([3, 3])


@pytest.mark.parametrize("keep,kept", [(64, 68), (128, 132), (192, 196), (72, 76)])
def test_released_budget_keeps_the_pivots_plus_keep_floor_divided_by_pivots(keep, kept):
    # the v1.5 scripts: 4 + 4 pivots, max_num_trunction // 8 tokens each, image pivots on top
    gen = torch.Generator().manual_seed(0)
    keys, states = torch.randn(2, 576, 16, generator=gen), torch.randn(2, 576, 24, generator=gen)
    out = get_pruner("dart")(keys, states, torch.randn(2, 9, 16, generator=gen), torch.randn(2, 9, 24, generator=gen), keep)
    assert out.shape == (2, kept)
    exact = get_pruner("dart")(keys, states, torch.randn(2, 9, 16, generator=gen), torch.randn(2, 9, 24, generator=gen),
                               keep, budget="exact")
    assert exact.shape == (2, keep)
    for row in (*out, *exact):
        assert bool((row[1:] > row[:-1]).all()) and 0 <= int(row.min()) and int(row.max()) < 576


# ---- against the plain loop ----------------------------------------------------------------

def _batch(seed, dtype, batch=3, num=40, text=7, dim=12):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    lengths = [text, text - 2, 4][:batch]
    text_mask = torch.arange(text)[None] < torch.tensor(lengths)[:, None]
    return make(batch, num, dim), make(batch, num, 2 * dim), make(batch, text, dim), make(batch, text, 2 * dim), text_mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("keep", [8, 16, 21, 33, 39])
@pytest.mark.parametrize("budget", ["released", "exact"])
def test_matches_the_plain_loop(dtype, keep, budget):
    starts = [0, 35, 101]
    for seed in range(3):
        ik, ist, tk, tst, text_mask = _batch(seed, dtype)
        num, text = ik.shape[1], tk.shape[1]
        out = get_pruner("dart")(ik, ist, tk, tst, keep, text_mask=text_mask, budget=budget,
                                 image_positions=torch.tensor(starts)[:, None] + torch.arange(num),
                                 text_positions=torch.tensor(starts)[:, None] + num + torch.arange(text))
        for row, start in enumerate(starts):
            real = text_mask[row]
            expected = reference_dart(ik[row], ist[row], tk[row][real], tst[row][real], keep, start=start, budget=budget)
            assert out[row].tolist() == expected, f"seed {seed}, row {row}"


def test_rows_are_independent_and_keep_at_least_n_keeps_all():
    ik, ist, tk, tst, text_mask = _batch(4, torch.float32)
    together = get_pruner("dart")(ik, ist, tk, tst, 16, text_mask=text_mask)
    for row in range(3):
        alone = get_pruner("dart")(ik[row:row + 1], ist[row:row + 1], tk[row:row + 1], tst[row:row + 1], 16,
                                   text_mask=text_mask[row:row + 1])
        assert torch.equal(together[row:row + 1], alone)
    assert torch.equal(get_pruner("dart")(ik, ist, tk, tst, 40, text_mask=text_mask), torch.arange(40).expand(3, 40))


# ---- registry, config and bad input ------------------------------------------------------

def test_registers_as_an_llm_stage_method():
    assert get_entry("dart").stage == "llm"
    assert "dart" in list_pruners(stage="llm") and "dart" not in list_pruners(stage="pre_llm")
    assert (dart.DEFAULT_LAYER, dart.DEFAULT_PIVOT_IMAGE, dart.DEFAULT_PIVOT_TEXT) == (2, 4, 4)
    assert PruningConfig(method="dart").resolve_keep(576) == 64  # the paper's 88.9% headline


@pytest.mark.parametrize("kwargs,match", [
    ({"keep": 0}, "keep=0"), ({"keep": True}, "keep=True"), ({"budget": "paper"}, "budget='paper'"),
    ({"pivot_image": 41}, r"pivot_image=41 must be an integer in \[0, N=40\]"), ({"pivot_text": -1}, "pivot_text=-1"),
    ({"pivot_image": 0, "pivot_text": 0}, "at least 1"), ({"pivot_text": 5}, r"rows have \[7, 5, 4\]"),
    ({"budget": "exact", "keep": 3}, "keep >= pivot_image"),
])
def test_bad_arguments_raise_naming_the_value(kwargs, match):
    ik, ist, tk, tst, text_mask = _batch(0, torch.float32)
    kwargs = {"keep": 16, "text_mask": text_mask, **kwargs}
    with pytest.raises(ValueError, match=match):
        get_pruner("dart")(ik, ist, tk, tst, **kwargs)


def test_bad_tensors_raise_naming_them():
    ik, ist, tk, tst, text_mask = _batch(0, torch.float32)
    with pytest.raises(ValueError, match="image_states must have shape"):
        get_pruner("dart")(ik, ist[:, :5], tk, tst, 16)
    with pytest.raises(ValueError, match="text_keys must have shape"):
        get_pruner("dart")(ik, ist, tk[..., :3], tst, 16)
    bad = ist.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image_states holds NaN"):
        get_pruner("dart")(ik, bad, tk, tst, 16)
    with pytest.raises(ValueError, match="text_mask must be a bool tensor"):
        get_pruner("dart")(ik, ist, tk, tst, 16, text_mask=text_mask.long())
    with pytest.raises(ValueError, match="image_positions must be an integer tensor"):
        get_pruner("dart")(ik, ist, tk, tst, 16, image_positions=torch.zeros(3, 40))
