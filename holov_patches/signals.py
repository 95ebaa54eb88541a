"""The model-free math behind the pruning signals: tensors and a layer's own projections
in, one score per visual token out. Nothing here knows a model family.

The [CLS] -> patch attention of one CLIP layer, without ``output_attentions=True``: the
authors obtain it by running the whole tower eagerly with ``output_attentions=True``
(24 attention maps materialised, SDPA off). Only one row of one layer is needed, so we
keep SDPA everywhere and recompute that row from the layer's (normed) input with the
layer's own q/k projections: softmax(q_cls . K^T * scale), heads averaged.
"""
from __future__ import annotations

import torch
from torch import nn


def cls_attention_from_hidden(attn: nn.Module, normed_hidden: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """attn: a CLIP-style attention module (q_proj, k_proj, num_heads, head_dim, scale);
    normed_hidden [B, T, C] its input. Returns [B, T-1], the [CLS] column dropped.

    ``dtype="float32"``: one query row, softmax in float32 (as 5.x eager attention), float32 out.
    ``dtype="model"``: the authors' path, LLaVA's transformers 4.37 eager ``CLIPAttention`` with
    ``output_attentions=True``: q scaled before the product, one bmm over all queries, softmax
    and the head mean in the input's dtype (float16 under LLaVA's loader). In float32 both
    give the same row up to rounding; in float16 / bfloat16 only ``model`` keeps the values
    (and the many exact ties) that the authors' pruner saw."""
    return cls_attention_heads_from_hidden(attn, normed_hidden, dtype).mean(dim=1)  # [B, T-1]


def cls_attention_heads_from_hidden(attn: nn.Module, normed_hidden: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """The same row per head: [B, H, T-1] (see :func:`cls_attention_from_hidden` for ``dtype``)."""
    if dtype not in ("model", "float32"):
        raise ValueError(f"dtype={dtype!r} is not one of ('model', 'float32')")
    if dtype == "model" and normed_hidden.dtype != torch.float32:
        return _cls_attention_as_eager_437(attn, normed_hidden)
    bsz, seq, _ = normed_hidden.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(normed_hidden[:, :1]).view(bsz, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, hd]
    k = attn.k_proj(normed_hidden).view(bsz, seq, heads, head_dim).transpose(1, 2)  # [B, H, T, hd]
    logits = torch.matmul(q, k.transpose(2, 3)) * attn.scale  # [B, H, 1, T]
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # as eager attention does
    return probs[:, :, 0, 1:]  # [B, H, T-1]


def _cls_attention_as_eager_437(attn: nn.Module, normed_hidden: torch.Tensor) -> torch.Tensor:
    """The same torch calls, in the same order and dtype, as 4.37's eager CLIPAttention
    (the full [T, T] product is formed because a one-row product may round differently)."""
    bsz, seq, _ = normed_hidden.shape
    heads, head_dim = attn.num_heads, attn.head_dim

    def per_head(x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B*H, T, hd]
        return x.view(bsz, seq, heads, head_dim).transpose(1, 2).contiguous().view(bsz * heads, seq, head_dim)

    q = per_head(attn.q_proj(normed_hidden) * attn.scale)
    k = per_head(attn.k_proj(normed_hidden))
    probs = torch.nn.functional.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)  # [B*H, T, T] input dtype
    return probs.view(bsz, heads, seq, seq)[:, :, 0, 1:]  # [B, H, T-1] input dtype


def attention_keys_from_hidden(attn: nn.Module, normed_hidden: torch.Tensor) -> torch.Tensor:
    """The layer's attention keys averaged over heads: [B, T, hd] in the input's dtype, [CLS] first.

    As VisionZip reads them: ``k_proj`` of the layer's normed input, split into heads
    ([B, H, T, hd]) and averaged over the head axis."""
    bsz, seq, _ = normed_hidden.shape
    keys = attn.k_proj(normed_hidden).view(bsz, seq, attn.num_heads, attn.head_dim).transpose(1, 2)  # [B, H, T, hd]
    return keys.mean(dim=1)
