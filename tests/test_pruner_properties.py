"""Contract tests run on EVERY registered pre-LLM pruner (timm style: a new method is tested
by registering it). HoloV runs in both modes; only faithful HoloV may return -1 zero pads
and kept tokens outside raster order, as the released code does."""
from __future__ import annotations

import re

import pytest
import torch

from holov_patches import get_pruner, list_pruners
from holov_patches.registry import NO_SOURCE_INDEX, get_entry

ROWS, COLS, DIM = 8, 8, 16
N = ROWS * COLS
# methods whose kept tokens include merged vectors, not rows of the input
MERGING = {n for n in list_pruners(stage="pre_llm") if get_entry(n).merges} | {"visionzip_projected"}


def _cases():
    for name in list_pruners(stage="pre_llm"):
        if name == "holov":
            for mode in ("faithful", "improved"):
                yield pytest.param(name, {"mode": mode}, id=f"holov-{mode}")
        else:
            yield pytest.param(name, {}, id=name)


CASES = list(_cases())
NON_MERGING = [c for c in CASES if c.values[0] not in MERGING]


def _faithful(name, opts) -> bool:
    return name == "holov" and opts.get("mode") == "faithful"


def _inputs(batch=3, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, N, DIM, generator=gen).to(dtype)
    cls_attn = torch.softmax(3 * torch.randn(batch, N, generator=gen), dim=-1)  # float32, like the model's
    return tokens, cls_attn


def _declared_inputs(name, tokens):
    """The extra inputs a method declares (keys, [CLS] token, per-head attention, CLIP-space
    image and text embeddings), made from the tokens alone so that slicing a batch slices
    them too."""
    made = {
        "cls_attn_heads": lambda: torch.softmax(tokens[..., :2].float().transpose(1, 2) * 3, dim=-1).to(tokens.dtype),
        "keys": lambda: tokens[..., :4] + 0.5,
        "cls_token": lambda: tokens.mean(dim=1),
        "image_embeds": lambda: tokens[..., :8] + 0.25,
        "text_embeds": lambda: tokens[:, :3, :8].mean(dim=1) - 0.5,
    }
    return {need: made[need]() for need in get_entry(name).needs if need != "cls_attn"}


def _prune(name, opts, tokens, cls_attn, keep, **extra):
    return get_pruner(name)(tokens, cls_attn, keep, grid=(ROWS, COLS), **opts, **_declared_inputs(name, tokens), **extra)


@pytest.mark.parametrize("keep", [1, 7, 20, N - 1])
@pytest.mark.parametrize("name,opts", CASES)
def test_keeps_k_distinct_valid_indices(name, opts, keep):
    tokens, cls_attn = _inputs()
    kept, index = _prune(name, opts, tokens, cls_attn, keep)
    assert kept.shape == (3, keep, DIM) and index.shape == (3, keep)
    assert index.dtype == torch.int64
    assert int(index.max()) < N
    for row in range(3):
        real = index[row][index[row] >= 0]
        assert real.unique().numel() == real.numel(), "a position is kept twice"
        if _faithful(name, opts):
            assert bool((index[row] >= -1).all())
            assert bool((kept[row][index[row] < 0] == 0).all()), "a -1 pad must be a zero vector"
        elif get_entry(name).merges:
            assert bool(((index[row] >= 0) | (index[row] == NO_SOURCE_INDEX)).all()), "only -2 marks a row without a source"
            assert bool((real[1:] > real[:-1]).all()), "kept patches must be in raster order"
        else:
            assert real.numel() == keep, "only faithful HoloV may pad with -1"
            assert bool((index[row][1:] > index[row][:-1]).all()), "kept tokens must be in raster order"


@pytest.mark.parametrize("name,opts", NON_MERGING)
def test_kept_tokens_are_the_rows_at_kept_index(name, opts):
    tokens, cls_attn = _inputs()
    kept, index = _prune(name, opts, tokens, cls_attn, 13)
    real = index >= 0
    expected = tokens.gather(1, index.clamp(min=0).unsqueeze(-1).expand(-1, -1, DIM))
    assert torch.equal(kept[real], expected[real])


@pytest.mark.parametrize("keep", [N, N + 5])
@pytest.mark.parametrize("name,opts", CASES)
def test_keep_at_least_n_keeps_everything_in_raster_order(name, opts, keep):
    tokens, cls_attn = _inputs()
    kept, index = _prune(name, opts, tokens, cls_attn, keep)
    assert torch.equal(index, torch.arange(N).expand(3, N))
    assert torch.equal(kept, tokens)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4", None])
@pytest.mark.parametrize("name,opts", CASES)
def test_bad_keep_raises_naming_the_value(name, opts, bad):
    tokens, cls_attn = _inputs()
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        _prune(name, opts, tokens, cls_attn, bad)


@pytest.mark.parametrize("shape", [(3, N - 1), (3, N, 1), (2, N), (N,)])
@pytest.mark.parametrize("name,opts", CASES)
def test_wrong_cls_attn_shape_raises(name, opts, shape):
    tokens, _ = _inputs()
    with pytest.raises(ValueError, match="cls_attn"):
        _prune(name, opts, tokens, torch.rand(shape), 8)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name,opts", CASES)
def test_non_finite_cls_attn_raises(name, opts, bad_value):
    tokens, cls_attn = _inputs()
    cls_attn[1, 5] = bad_value
    with pytest.raises(ValueError, match="cls_attn"):
        _prune(name, opts, tokens, cls_attn, 8)


@pytest.mark.parametrize("name,opts", CASES)
def test_unknown_option_raises(name, opts):
    tokens, cls_attn = _inputs()
    with pytest.raises((TypeError, ValueError), match="no_such_option"):
        _prune(name, opts, tokens, cls_attn, 8, no_such_option=1)


@pytest.mark.parametrize("name,opts", CASES)
def test_deterministic(name, opts):
    tokens, cls_attn = _inputs()
    first = _prune(name, opts, tokens, cls_attn, 11)
    second = _prune(name, opts, tokens.clone(), cls_attn.clone(), 11)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("name,opts", CASES)
def test_batch_rows_are_independent(name, opts):
    tokens, cls_attn = _inputs(batch=4, seed=3)
    kept, index = _prune(name, opts, tokens, cls_attn, 10)
    for row in range(4):
        kept_1, index_1 = _prune(name, opts, tokens[row:row + 1], cls_attn[row:row + 1], 10)
        assert torch.equal(index[row:row + 1], index_1)
        torch.testing.assert_close(kept[row:row + 1], kept_1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,opts", CASES)
def test_dtype_is_preserved(name, opts, dtype):
    tokens, cls_attn = _inputs(dtype=dtype)
    kept, index = _prune(name, opts, tokens, cls_attn, 9)
    assert kept.dtype == dtype and index.dtype == torch.int64
    assert kept.shape == (3, 9, DIM)
    assert bool(torch.isfinite(kept).all())


@pytest.mark.parametrize("name,opts", CASES)
def test_inputs_are_not_modified(name, opts):
    tokens, cls_attn = _inputs()
    tokens_before, attn_before = tokens.clone(), cls_attn.clone()
    _prune(name, opts, tokens, cls_attn, 9)
    assert torch.equal(tokens, tokens_before) and torch.equal(cls_attn, attn_before)


def test_every_pre_llm_method_is_covered():
    names = {c.values[0] for c in CASES}
    assert {"holov", "cls_topk", "visionzip", "visionzip_projected", "divprune", "random", "vispruner", "cdpruner"} <= names
    assert "fastv" not in names  # it runs inside the LLM
