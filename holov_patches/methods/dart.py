"""DART's visual-token selection: keep the image tokens that duplicate a few pivot tokens
least, partway through the LLM.

Paper: "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
More" (Wen et al., EMNLP 2025, arXiv 2502.11494). Code: github.com/ZichenWen1/DART; its
LLaVA-1.5 version is ``DART.forward`` (the pruning step, lines 331-359) and
``DART.get_retained_image_token`` (lines 397-449) in
``llava/model/language_model/modeling_llama_self.py``, with the keys its patched SDPA
attention returns (lines 862-912), driven by ``scripts/v1_5/eval/*.sh`` through
``llava/eval/model_vqa_loader.py`` (read at upstream commit 5a19452, 2025-08-31).

What the released LLaVA-1.5 code does, and so what this module does by default:

- Where: layers 0..K-1 see every token; before layer K the kept image tokens are chosen and
  layers K, K+1, ... see only them, with their original position ids (K = 2: every v1.5
  script passes ``--pruned_layer 2``). Text tokens are never pruned.
- Pivots: the ``pivot_image`` (4) image tokens and the ``pivot_text`` (4) text tokens after
  the image whose layer K-1 attention keys (rotary embedding applied, heads concatenated)
  have the largest L1 norm.
- Duplication: the cosine similarity of the hidden states that leave layer K-1, passed
  through the LLM's final RMSNorm.
- Selection: the pivots are visited in turn; each one keeps the ``keep // P`` image tokens
  (P = pivot_image + pivot_text; ``max_num_trunction // P`` in the released code, 128 // 8 =
  16) least similar to it among the image tokens nobody has kept yet (pivots excluded). The
  image pivots are kept too, so ``pivot_image + P * (keep // P)`` image tokens remain:
  132 for keep=128, 68 for keep=64 (``budget="released"``).
- Visiting order: the released code loops over a Python ``set`` of the pivots' sequence
  positions, built from the image pivots then the text pivots, each in descending norm. A
  small int set iterates by hash slot (position mod 32 for 8 pivots, collisions probed),
  not by position or score; the order matters because each pivot takes from what the
  earlier ones left. We visit the pivots in that same order (:func:`released_pivot_order`
  builds the same set), so ``image_positions`` / ``text_positions`` must be the tokens'
  positions in the unpadded prompt, as in the authors' batch-of-one run.
- Precision: everything in the dtype of the given tensors (float16 under LLaVA's loader).

Ours differs in: batched (a [B, N] pool per step instead of Python index lists); ties
(equal norms or similarities) go to the lower position, where the released code leaves them
to ``torch.topk``; ``keep >= N`` keeps everything and a pool that runs out stops a pivot
early (the released code would crash); a row with fewer than ``pivot_text`` text tokens is
refused with a ValueError; and ``budget="exact"`` (not in the released code) keeps exactly
``keep`` image tokens: the image pivots plus ``keep - pivot_image`` spread over the pivots in
visiting order (the first ``(keep - pivot_image) mod P`` take one more).

This module holds only the pure selection (registered with ``stage="llm"``); capturing the
keys and hidden states inside the LLM and dropping the tokens is the model integration's job
(``llava/model/dart.py``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from holov_patches.methods._contract import check_choice, is_int
from holov_patches.registry import register_pruner

DEFAULT_LAYER = 2
DEFAULT_PIVOT_IMAGE = 4
DEFAULT_PIVOT_TEXT = 4
BUDGETS = ("released", "exact")


def released_pivot_order(positions: Sequence[int]) -> List[int]:
    """Indices into ``positions`` (distinct ints) in the order the released code visits
    them: the iteration order of a Python set built from them in this order."""
    where = {p: i for i, p in enumerate(positions)}
    if len(where) != len(positions):
        raise ValueError(f"pivot positions must be distinct, got {list(positions)}")
    return [where[p] for p in set(positions)]


def pivot_budgets(keep: int, pivot_image: int, num_pivots: int, pool: int, budget: str) -> List[int]:
    """Image tokens each pivot keeps, in visiting order, never more than the pool holds."""
    if budget == "released":
        wanted = [keep // num_pivots] * num_pivots
    else:
        base, extra = divmod(keep - pivot_image, num_pivots)
        wanted = [base + (1 if j < extra else 0) for j in range(num_pivots)]
    out = []
    for want in wanted:
        take = min(want, pool)
        out.append(take)
        pool -= take
    return out


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions [B, count] of the largest scores, ties to the lower position."""
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :count]


def _check_tensor(name: str, value, shape) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != len(shape) or \
            any(s is not None and s != v for s, v in zip(shape, value.shape)):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must have shape {tuple('*' if s is None else s for s in shape)}, got {got}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {value.dtype}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN/inf values; it must be finite")
    return value


def _positions(name: str, value, shape, default: torch.Tensor) -> torch.Tensor:
    if value is None:
        return default
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.is_floating_point() \
            or value.dtype == torch.bool:
        got = (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be an integer tensor of shape {tuple(shape)}, got {got}")
    return value


@register_pruner("dart", stage="llm")
def select(image_keys: torch.Tensor, image_states: torch.Tensor, text_keys: torch.Tensor, text_states: torch.Tensor,
           keep: int, *, text_mask: Optional[torch.Tensor] = None, image_positions: Optional[torch.Tensor] = None,
           text_positions: Optional[torch.Tensor] = None, pivot_image: int = DEFAULT_PIVOT_IMAGE,
           pivot_text: int = DEFAULT_PIVOT_TEXT, budget: str = "released") -> torch.Tensor:
    """Kept image tokens [B, K'] (sorted) least duplicated with key-norm pivots (DART, arXiv 2502.11494).

    image_keys [B, N, Dk] / text_keys [B, M, Dk]: layer K-1's rotary keys, heads concatenated;
    image_states [B, N, D] / text_states [B, M, D]: layer K-1's output through the final norm;
    text_mask [B, M] (default all True): which text slots are real; image_positions [B, N] /
    text_positions [B, M]: positions in the unpadded prompt (default 0..N-1, N..N+M-1), used
    only for the released visiting order. Returns indices into the N image tokens."""
    _check_tensor("image_keys", image_keys, (None, None, None))
    batch, num, key_dim = image_keys.shape
    if batch < 1 or num < 1:
        raise ValueError(f"image_keys {tuple(image_keys.shape)} must have B >= 1 rows and N >= 1 image tokens")
    _check_tensor("image_states", image_states, (batch, num, None))
    _check_tensor("text_keys", text_keys, (batch, None, key_dim))
    text_len = text_keys.shape[1]
    _check_tensor("text_states", text_states, (batch, text_len, image_states.shape[-1]))
    for name, t in (("image_states", image_states), ("text_keys", text_keys), ("text_states", text_states)):
        if t.device != image_keys.device:
            raise ValueError(f"{name} is on {t.device} but image_keys are on {image_keys.device}; put all on one device")
    if not is_int(keep) or keep < 1:
        raise ValueError(f"keep={keep!r} must be an integer >= 1")
    check_choice("budget", budget, BUDGETS)
    if not is_int(pivot_image) or not 0 <= pivot_image <= num:
        raise ValueError(f"pivot_image={pivot_image!r} must be an integer in [0, N={num}]")
    if not is_int(pivot_text) or pivot_text < 0:
        raise ValueError(f"pivot_text={pivot_text!r} must be an integer >= 0")
    num_pivots = int(pivot_image) + int(pivot_text)
    if num_pivots < 1:
        raise ValueError("pivot_image + pivot_text must be at least 1 (DART needs a pivot)")
    if budget == "exact" and keep < pivot_image:
        raise ValueError(f"budget='exact' needs keep >= pivot_image, got keep={keep}, pivot_image={pivot_image}")
    device = image_keys.device
    if text_mask is None:
        text_mask = torch.ones(batch, text_len, dtype=torch.bool, device=device)
    elif not isinstance(text_mask, torch.Tensor) or text_mask.dtype != torch.bool or tuple(text_mask.shape) != (batch, text_len):
        got = (tuple(text_mask.shape), text_mask.dtype) if isinstance(text_mask, torch.Tensor) else type(text_mask).__name__
        raise ValueError(f"text_mask must be a bool tensor of shape {(batch, text_len)}, got {got}")
    counts = text_mask.sum(1)
    if bool((counts < pivot_text).any()):
        raise ValueError(f"pivot_text={pivot_text} text pivots need that many text tokens after the image in every row; "
                         f"rows have {counts.tolist()}")
    steps = torch.arange(num + text_len, device=device)
    image_positions = _positions("image_positions", image_positions, (batch, num), steps[:num].expand(batch, -1))
    text_positions = _positions("text_positions", text_positions, (batch, text_len), steps[num:].expand(batch, -1))
    keep = int(keep)
    if keep >= num:
        return torch.arange(num, device=device).expand(batch, num).contiguous()  # [B, N]

    image_pivots = _top(image_keys.norm(p=1, dim=-1), pivot_image)  # [B, Pi]
    text_norms = text_keys.norm(p=1, dim=-1).masked_fill(~text_mask, float("-inf"))
    text_pivots = _top(text_norms, pivot_text)  # [B, Pt]
    pivot_states = torch.cat([image_states.gather(1, image_pivots[..., None].expand(-1, -1, image_states.shape[-1])),
                              text_states.gather(1, text_pivots[..., None].expand(-1, -1, text_states.shape[-1]))], 1)
    positions = torch.cat([image_positions.gather(1, image_pivots), text_positions.gather(1, text_pivots)], 1)
    order = torch.tensor([released_pivot_order(row) for row in positions.tolist()], dtype=torch.long, device=device)
    pivot_states = pivot_states.gather(1, order[..., None].expand(-1, -1, pivot_states.shape[-1]))  # [B, P, D]

    taken = torch.zeros(batch, num, dtype=torch.bool, device=device)
    taken.scatter_(1, image_pivots, True)  # the image pivots are kept, and are no candidates
    budgets = pivot_budgets(keep, int(pivot_image), num_pivots, num - int(pivot_image), budget)
    for step, count in enumerate(budgets):
        if count == 0:
            continue
        similarity = F.cosine_similarity(pivot_states[:, step:step + 1], image_states, dim=-1)  # [B, N]
        picks = _top((-similarity).masked_fill(taken, float("-inf")), count)  # the least duplicated
        taken.scatter_(1, picks, True)
    return taken.nonzero()[:, 1].view(batch, -1)  # [B, K'] sorted
