"""FastV's visual-token selection: keep the image tokens the last prompt token attends to
most, partway through the LLM.

Paper: "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration
for Large Vision-Language Models" (Chen et al., ECCV 2024, arXiv 2403.06764). FastV runs
the first K LLM layers on all tokens, then ranks the image tokens by the attention the
last token of the sequence pays them (averaged over heads; in a padded batch, each row's
last real token) and drops the lowest-ranked fraction R for all later layers.

Defaults, as in the paper's main setting "K=2, R=50%":
- ``DEFAULT_LAYER = 2``: the ranking uses the attention of layer K - 1 (0-based: the
  second decoder layer), and layers K, K + 1, ... see only the kept image tokens.
- ``DEFAULT_RATIO = 0.5``: R, the fraction of image tokens dropped; keep =
  round(N_vis * (1 - R)) (288 of 576). Declared to the registry (``default_ratio``), so a
  config that gives neither keep nor ratio (a bare ``method=fastv``) prunes R = 50%.

Facts from the authors' code (github.com/pkunlp-icler/FastV): at layer K their decoder
loop averages layer K-1's attention weights over heads, takes the row of the sequence's last
position over the image span and keeps its top ATTENTION_RANK tokens, sorted
(src/transformers/src/transformers/models/llama/modeling_llama.py, lines 736-749); their
scripts run K=2 with ATTENTION_RANK 72/144/288/432 = (1 - R) * 576
(src/FastV/inference/eval/eval_ocrvqa_fastv_token_mask.sh).

This module holds only the pure selection (registered with ``stage="llm"``):
``select(last_token_attn [B, N_vis], keep) -> kept positions [B, K]``, sorted so the kept
image tokens stay in their original order, as the authors' code does (it sorts the kept
sequence positions). Capturing the attention row inside the LLM, dropping the tokens
and fixing positions, masks and the KV cache is the model adapter's job.

How ours differs from the authors' code: they select per sequence with batch size 1 and
hard-coded image-token offsets; this function is batched, validates its inputs and
returns positions relative to the first image token.
"""
from __future__ import annotations

import torch

from holov_patches.methods._contract import is_int
from holov_patches.registry import register_pruner

DEFAULT_LAYER = 2
DEFAULT_RATIO = 0.5


@register_pruner("fastv", stage="llm", default_ratio=DEFAULT_RATIO)
def select(last_token_attn: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions [B, K] (sorted) of the K image tokens with the largest last-token attention (FastV, arXiv 2403.06764)."""
    if not isinstance(last_token_attn, torch.Tensor) or last_token_attn.dim() != 2:
        shape = tuple(last_token_attn.shape) if isinstance(last_token_attn, torch.Tensor) else type(last_token_attn).__name__
        raise ValueError(f"last_token_attn must be a [B, N_vis] tensor, got {shape}")
    if not last_token_attn.is_floating_point():
        raise ValueError(f"last_token_attn must be floating point, got dtype {last_token_attn.dtype}")
    batch, num = last_token_attn.shape
    if num < 1:
        raise ValueError(f"last_token_attn must cover at least one image token, got N_vis={num}")
    if not bool(torch.isfinite(last_token_attn).all()):
        raise ValueError("last_token_attn holds NaN/inf values; it must be finite")
    if not is_int(keep) or keep < 1:
        raise ValueError(f"keep={keep!r} must be an integer >= 1")
    keep = int(keep)
    if keep >= num:
        return torch.arange(num, device=last_token_attn.device).expand(batch, num).contiguous()  # [B, N_vis]
    return last_token_attn.topk(keep, dim=1).indices.sort(dim=1).values  # [B, K]
