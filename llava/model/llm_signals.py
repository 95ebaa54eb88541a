"""What the in-LLM pruning methods (FastV, DART) read from a decoder layer, and their common
option checks. Used by their adapters (``llava.model.fastv``, ``llava.model.dart``) and by
the hooks (``llava.model.llm_pruning``)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv


def check_options(method: str, options: Mapping[str, Any], accepted) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {method} options {unknown}; accepted: {sorted(accepted)}")


def check_layer(method: str, layer: Any, num_layers: int) -> int:
    """K, the first layer that sees only the kept tokens: an integer in [1, num_layers - 1]."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < num_layers:
        raise ValueError(f"{method} layer={layer!r} must be an integer in [1, {num_layers - 1}] for a {num_layers}-layer LLM")
    return layer


def real_tokens(mask: Any, bsz: int, seq: int, device) -> torch.Tensor:
    """[B, T] True where the token is not padding, read from the decoder's 4-D mask diagonal
    (bool: True = attend; additive float: 0 = attend); no mask means no padding."""
    if not isinstance(mask, torch.Tensor):
        return torch.ones(bsz, seq, dtype=torch.bool, device=device)
    if mask.dim() != 4:
        raise ValueError(f"in-LLM pruning needs the decoder's 4-D attention mask, got shape {tuple(mask.shape)}; "
                         "use attn_implementation 'sdpa' or 'eager'")
    diag = mask[:, 0, :seq, :seq].diagonal(dim1=-2, dim2=-1)  # [B or 1, T]
    real = diag if diag.dtype == torch.bool else diag == 0
    return real.expand(bsz, -1)


def last_real(real: torch.Tensor) -> torch.Tensor:
    """[B] position of each row's last real token."""
    steps = torch.arange(real.shape[1], device=real.device).expand_as(real)
    return steps.masked_fill(~real, -1).amax(dim=1)


def rotary_keys(attn, normed: torch.Tensor, position_embeddings) -> torch.Tensor:
    """The layer's attention keys [B, H, T, hd] of ``normed`` (its input after input_layernorm):
    k_proj, rotary embedding, KV heads repeated to the query heads, as the layer computes them."""
    bsz, seq, _ = normed.shape
    cos, sin = position_embeddings
    k = attn.k_proj(normed).view(bsz, seq, -1, attn.head_dim).transpose(1, 2)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return repeat_kv(k, attn.num_key_value_groups)
