"""The single call every model integration makes: resolve K for this image and run the
registered pre-LLM pruner named by the config, with exactly the inputs it declared."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from holov_patches.config import PruningConfig
from holov_patches.registry import INPUTS, PrunerEntry, get_entry


def pre_llm_entry(config: PruningConfig) -> PrunerEntry:
    """The registry entry of ``config.method``; an in-LLM method raises (it has no pre-LLM pruner)."""
    entry = get_entry(config.method)
    if not entry.pre_llm:
        raise ValueError(f"method {config.method!r} runs inside the LLM (stage={entry.stage!r}); it has no pre-LLM pruner")
    return entry


def prune_visual_tokens(tokens: torch.Tensor, cls_attn: Optional[torch.Tensor], config: PruningConfig,
                        grid: Optional[Tuple[int, int]] = None, keep: Optional[int] = None,
                        **inputs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, N, *] at the method's stage, cls_attn [B, N] (None when the method does not
    declare it) and the other inputs it declares (``INPUTS`` names, as keywords)
    -> (kept_tokens [B, K, *], kept_index [B, K]).

    ``keep`` overrides the config's budget with one part's share of it (a multi-part image's
    ``PruningConfig.split_budget``); ``keep=0`` keeps nothing. An integration that did not
    compute a declared input, or passes one the method did not declare, gets a ValueError
    naming it: each integration computes exactly what the method needs."""
    entry = pre_llm_entry(config)
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be [B, N, D], got shape {tuple(tokens.shape)}")
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        raise ValueError(f"unknown pruner inputs {unknown}; known: {sorted(INPUTS)}")
    given = set(inputs) | ({"cls_attn"} if cls_attn is not None else set())
    missing = [n for n in entry.needs if n not in given]
    if missing:
        raise ValueError(f"method {config.method!r} needs {missing} ({'; '.join(INPUTS[n] for n in missing)}), "
                         "which this call did not pass")
    extra = sorted(given - set(entry.needs))
    if extra:
        raise ValueError(f"method {config.method!r} does not use {extra}; pass only what it declares: {list(entry.needs)}")
    if keep == 0:
        return tokens[:, :0], torch.zeros(tokens.shape[0], 0, dtype=torch.long, device=tokens.device)
    if keep is not None:
        config = config.with_keep(keep)
    keep = config.resolve_keep(tokens.shape[1])
    return entry.fn(tokens, cls_attn, keep, grid=grid, **inputs, **config.pruner_kwargs())
