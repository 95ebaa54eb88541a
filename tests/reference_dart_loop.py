"""A plain per-row Python-loop reference of DART's token selection, written by us from the
released LLaVA code (github.com/ZichenWen1/DART, llava/model/language_model/
modeling_llama_self.py, ``DART.get_retained_image_token``) to stand for it in tests.

One row, laid out as in the authors' batch-of-one LLaVA-1.5 run: the image's N tokens sit at
prompt positions start .. start + N - 1 and the text after it at start + N onwards. It keeps
the released structure: Python lists of positions, a ``set`` of pivot positions iterated as
is, one ``cosine_similarity`` call of a pivot against the remaining pool per pivot, all in the
tensors' dtype. Two rules are the project's, where the released code leaves it to
``torch.topk`` or would crash: ties go to the lower position, and a pivot never takes more
than the pool still holds. ``budget="exact"`` is the project's option.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


def _top(values: List[float], count: int) -> List[int]:
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:count]


def reference_dart(image_keys: torch.Tensor, image_states: torch.Tensor, text_keys: torch.Tensor,
                   text_states: torch.Tensor, keep: int, pivot_image: int = 4, pivot_text: int = 4, start: int = 0,
                   budget: str = "released") -> List[int]:
    """image_keys [N, Dk], image_states [N, D], text_keys [M, Dk], text_states [M, D] -> the kept
    image tokens (0..N-1), sorted."""
    num = image_keys.shape[0]
    if keep >= num:
        return list(range(num))
    states = torch.cat([image_states, text_states])  # row p - start is prompt position p
    image_norms = image_keys.norm(p=1, dim=-1).tolist()
    text_norms = text_keys.norm(p=1, dim=-1).tolist()
    image_pivots = [start + i for i in _top(image_norms, pivot_image)]
    text_pivots = [start + num + j for j in _top(text_norms, pivot_text)]
    pivots = pivot_image + pivot_text
    if budget == "released":
        counts = [keep // pivots] * pivots
    else:
        base, extra = divmod(keep - pivot_image, pivots)
        counts = [base + (1 if j < extra else 0) for j in range(pivots)]

    kept = set(image_pivots + text_pivots)
    pool = sorted(set(range(start, start + num)) - set(image_pivots))
    for step, pivot in enumerate(list(kept)):
        count = min(counts[step], len(pool))
        if count == 0:
            continue
        rows = torch.tensor([p - start for p in pool])
        similarity = F.cosine_similarity(states[pivot - start], states[rows], dim=-1).tolist()
        chosen = [pool[i] for i in _top([-s for s in similarity], count)]
        kept.update(chosen)
        pool = [p for p in pool if p not in chosen]
    kept.difference_update(text_pivots)
    return sorted(p - start for p in kept)
