"""Faithful HoloV in float16 / bfloat16 keeps what the authors' code keeps on the same device
(CPU here) and dtype:

- the [CLS] row is computed as LLaVA's transformers 4.37 eager CLIPAttention computes it
  (checked against 4.37.2 itself in the side virtualenv), softmax and head mean in the
  model dtype;
- exact ties inside a chunk (many in half precision) are ordered as ``torch.topk`` orders
  them on the chunk's own row, as the released code calls it (checked against the per-chunk
  loop reference, which makes that call)."""
from __future__ import annotations

import pytest
import torch

import reference_holov_loop as REF
from holov_patches import PruningConfig, prune_visual_tokens
from holov_patches.signals import cls_attention_from_hidden
from reference_venv import run_reference

HALF = [torch.float16, torch.bfloat16]


def _tied_inputs(seed: int, batch: int, num: int, dim: int, dtype: torch.dtype, levels: int):
    """Tokens of one dtype and an attention row with only ``levels`` distinct values (ties)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, num, dim, generator=g).to(dtype)
    attn = (torch.randint(1, levels + 1, (batch, num), generator=g).float() / (levels * num)).to(dtype)
    return tokens, attn


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("seed,num,keep,levels", [(0, 576, 64, 3), (1, 576, 128, 5), (2, 576, 192, 2),
                                                  (3, 577, 64, 4), (4, 100, 7, 2), (5, 576, 32, 8)])
def test_ties_are_ordered_as_the_released_per_chunk_topk(dtype, seed, num, keep, levels):
    tokens, attn = _tied_inputs(seed, 3, num, 32, dtype, levels)
    assert len(attn[0].unique()) <= levels  # every chunk is full of exact ties
    _, ours = prune_visual_tokens(tokens, attn, PruningConfig(keep=keep))
    # The reference scores in float32 (as ours does: a documented difference) and picks with
    # torch.topk on each chunk's half-precision attention, as the released code does.
    _, reference = REF.reference_holov_loop(tokens, attn, keep, score_dtype=torch.float32)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("dtype", HALF)
def test_the_lower_index_rule_would_disagree_on_these_inputs(dtype):
    """The inputs above do exercise ties: a stable lower-index order keeps other tokens."""
    tokens, attn = _tied_inputs(0, 3, 576, 32, dtype, 3)
    _, reference = REF.reference_holov_loop(tokens, attn, 64, score_dtype=torch.float32)
    chunk = attn[0, :36].float()
    by_lower_index = torch.argsort(chunk, descending=True, stable=True)
    by_topk = attn[0, :36].topk(35).indices
    assert not torch.equal(by_lower_index[:35], by_topk)
    assert reference.shape == (3, 64)


# ---------------------------------------------------------------- the [CLS] row
REFERENCE_ROW = '''
import torch
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPAttention
data = torch.load(payload["path"], weights_only=True)
config = CLIPVisionConfig(hidden_size=data["hidden"].shape[-1], num_attention_heads=payload["heads"])
attn = CLIPAttention(config).eval()
attn.load_state_dict(data["weights"])
attn = attn.to(data["hidden"].dtype)
with torch.no_grad():
    _, weights = attn(data["hidden"], output_attentions=True)
row = weights[:, :, 0, 1:].mean(dim=1)   # the authors' head mean of the [CLS] row
answer({"dtype": str(row.dtype), "row": row.float().tolist()})
'''


@pytest.mark.subprocess
@pytest.mark.parametrize("dtype", HALF)
def test_cls_row_in_the_model_dtype_equals_transformers_437_eager(dtype, tmp_path):
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPAttention

    torch.manual_seed(0)
    heads, width, seq = 4, 64, 577
    attn = CLIPAttention(CLIPVisionConfig(hidden_size=width, num_attention_heads=heads)).eval()
    hidden = torch.randn(2, seq, width).to(dtype)
    torch.save({"weights": attn.state_dict(), "hidden": hidden}, tmp_path / "layer.pt")
    expected = run_reference(REFERENCE_ROW, {"path": str(tmp_path / "layer.pt"), "heads": heads})
    assert expected["dtype"] == str(dtype)
    with torch.no_grad():
        ours = cls_attention_from_hidden(attn.to(dtype), hidden, "model")
        in_float32 = cls_attention_from_hidden(attn.float(), hidden.float(), "float32")
    assert ours.dtype == dtype
    assert torch.equal(ours.float(), torch.tensor(expected["row"]))  # bit for bit
    assert not torch.equal(in_float32, ours.float())  # the float32 option is a different row


def test_float32_towers_give_the_same_row_either_way():
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPAttention

    torch.manual_seed(1)
    attn = CLIPAttention(CLIPVisionConfig(hidden_size=32, num_attention_heads=2)).eval()
    hidden = torch.randn(1, 50, 32)
    with torch.no_grad():
        a = cls_attention_from_hidden(attn, hidden, "model")
        b = cls_attention_from_hidden(attn, hidden, "float32")
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
