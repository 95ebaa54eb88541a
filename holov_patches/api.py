"""The single call every model adapter makes: resolve K for this image and run the
registered pre-LLM pruner named by the config."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from holov_patches.config import PruningConfig
from holov_patches.registry import get_entry


def prune_visual_tokens(tokens: torch.Tensor, cls_attn: torch.Tensor, config: PruningConfig,
                        grid: Optional[Tuple[int, int]] = None, keep: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, N, D], cls_attn [B, N] -> (kept_tokens [B, K, D], kept_index [B, K]).

    ``keep`` overrides the config's budget with one part's share of it (a multi-part image's
    ``PruningConfig.split_budget``); ``keep=0`` keeps nothing."""
    if keep == 0:
        return tokens[:, :0], torch.zeros(tokens.shape[0], 0, dtype=torch.long, device=tokens.device)
    if keep is not None:
        config = config.with_keep(keep)
    entry = get_entry(config.method)
    if entry.stage != "pre_llm":
        raise ValueError(f"method {config.method!r} runs inside the LLM (stage={entry.stage!r}); it has no pre-LLM pruner")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be [B, N, D], got shape {tuple(tokens.shape)}")
    keep = config.resolve_keep(tokens.shape[1])
    return entry.fn(tokens, cls_attn, keep, grid=grid, **config.pruner_kwargs())
