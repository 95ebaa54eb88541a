"""The [CLS] -> patch attention of one CLIP layer, without ``output_attentions=True``.

The authors obtain it by running the whole tower eagerly with ``output_attentions=True``
(24 attention maps materialised, SDPA off). Only one row of one layer is needed, so we
keep SDPA everywhere and recompute that row from the layer's (normed) input with the
layer's own q/k projections: softmax(q_cls . K^T * scale), heads averaged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


def cls_attention_from_hidden(attn: nn.Module, normed_hidden: torch.Tensor) -> torch.Tensor:
    """attn: a CLIP-style attention module (q_proj, k_proj, num_heads, head_dim, scale);
    normed_hidden [B, T, C] its input. Returns [B, T-1] float32, the [CLS] column dropped."""
    bsz, seq, _ = normed_hidden.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(normed_hidden[:, :1]).view(bsz, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, hd]
    k = attn.k_proj(normed_hidden).view(bsz, seq, heads, head_dim).transpose(1, 2)  # [B, H, T, hd]
    logits = torch.matmul(q, k.transpose(2, 3)) * attn.scale  # [B, H, 1, T]
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # as eager attention does
    return probs[:, :, 0, 1:].mean(dim=1)  # [B, T-1]


def _layer_indices(select_layer: int, num_layers: int) -> Tuple[int, int]:
    """(layers to run, index of the layer whose attention is read).

    hidden_states has num_layers + 1 entries (embeddings first); attentions has num_layers.
    The authors read hidden_states[select_layer] and attentions[select_layer]; for the
    usual negative select_layer (-2 in LLaVA-1.5) both name the same layer."""
    if not -num_layers - 1 <= select_layer <= num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} is outside [-{num_layers + 1}, {num_layers}] for a {num_layers}-layer tower")
    hidden_index = select_layer % (num_layers + 1)
    if not -num_layers <= select_layer < num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} has no attention map: accepted [-{num_layers}, {num_layers - 1}]")
    attn_index = select_layer % num_layers
    return max(hidden_index, attn_index + 1), attn_index


def run_clip_vision(vision_model: nn.Module, pixel_values: torch.Tensor, select_layer: int,
                    with_cls_attn: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run a transformers ``CLIPVisionModel`` only as deep as LLaVA needs.

    Returns (hidden_states[select_layer] [B, T, C], cls_attn [B, T-1] float32 or None).
    Equal to the full model's ``output_hidden_states`` entry: the same modules run in the
    same order; the layers after the selected one are skipped."""
    core = getattr(vision_model, "vision_model", vision_model)  # 4.x nests it, 5.x does not
    layers = core.encoder.layers
    run_layers, attn_index = _layer_indices(select_layer, len(layers))
    hidden = core.pre_layrnorm(core.embeddings(pixel_values))
    hidden_index = select_layer % (len(layers) + 1)
    selected = hidden if hidden_index == 0 else None
    cls_attn = None
    for i, layer in enumerate(layers[:run_layers]):
        if with_cls_attn and i == attn_index:
            cls_attn = cls_attention_from_hidden(layer.self_attn, layer.layer_norm1(hidden))
        hidden = layer(hidden, None)
        if i + 1 == hidden_index:
            selected = hidden
    return selected, cls_attn
