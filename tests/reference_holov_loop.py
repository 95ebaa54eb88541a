"""A plain per-image, per-chunk Python-loop reference of HoloV's faithful mode.

Written by us from the rules of the released code (stated in docs/holov.md) to stand for the authors' released function
(HoloV, arXiv 2510.02912) in tests and in benchmarks/pruner.py: it loops over images
and chunks, runs one small matmul per chunk and uses torch.topk as the released code
does, computing in the input dtype. The only rule not from the released code is the
project API's "K >= N keeps all N tokens in raster order".
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch



def reference_chunks(num_tokens: int, num_crops: int) -> List[Tuple[int, int]]:
    """(start, size) of the non-empty raster chunks: floor(N/P) each, the first N mod P one longer."""
    base, extra = divmod(num_tokens, num_crops)
    chunks, start = [], 0
    for p in range(num_crops):
        size = base + (1 if p < extra else 0)
        if size == 0:
            continue
        chunks.append((start, size))
        start += size
    return chunks


def reference_token_scores(x: torch.Tensor, attn: torch.Tensor, alpha: float) -> torch.Tensor:
    """a + alpha * (var * scale) of every token of one chunk of n > 1 tokens: x [n, D], attn [n]."""
    n = x.shape[0]
    f = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
    s = f @ f.T
    s = s * (1 - torch.eye(n, dtype=s.dtype, device=s.device))
    mean = s.sum(1) / (n - 1)
    var = ((s - mean[:, None]) ** 2).sum(1) / (n - 1)
    a = attn * 1e3
    scale = torch.mean(torch.abs(a)) / (torch.mean(torch.abs(var)) + 1e-6)
    return a + alpha * (var * scale)


def reference_chunk_score(x: torch.Tensor, attn: torch.Tensor, alpha: float) -> torch.Tensor:
    """Score of one chunk: x [n, D], attn [n]; a one-token chunk scores its raw attention."""
    if x.shape[0] == 1:
        return attn[0]
    return reference_token_scores(x, attn, alpha).mean()


def reference_allocation(scores: torch.Tensor, keep: int) -> torch.Tensor:
    weights = scores / (scores.sum() + 1e-6)
    alloc = torch.floor(weights * keep).long()
    remainder = keep - int(alloc.sum())
    if remainder > 0:
        top = torch.topk(weights, k=min(remainder, len(scores))).indices
        alloc[top] += 1
    return alloc


def reference_holov_loop(tokens: torch.Tensor, cls_attn: torch.Tensor, keep: int, num_crops: Optional[int] = None,
                         alpha: float = 0.09, score_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, N, D], cls_attn [B, N] -> (kept [B, K, D], kept_index [B, K], -1 for a zero pad).

    ``score_dtype`` (default: the input dtype, as the released code) is the dtype the chunk
    scores are computed in; the selection inside a chunk always calls torch.topk on the
    attention in its own dtype."""
    batch, num_tokens, dim = tokens.shape
    if keep >= num_tokens:
        return tokens.clone(), torch.arange(num_tokens, device=tokens.device).expand(batch, num_tokens).clone()
    num_crops = num_crops if num_crops is not None else max(1, math.floor((1024 / 576) * num_tokens / keep))  # the authors' float formula, written out here
    chunks = reference_chunks(num_tokens, num_crops)
    kept_rows, kept_indices = [], []
    for b in range(batch):
        x, attn = tokens[b], cls_attn[b]
        sx, sa = (x, attn) if score_dtype is None else (x.to(score_dtype), attn.to(score_dtype))
        scores = torch.stack([reference_chunk_score(sx[s:s + n], sa[s:s + n], alpha) for s, n in chunks])
        alloc = reference_allocation(scores, keep)
        picks = []
        for (start, size), k in zip(chunks, alloc.tolist()):
            if k <= 0:
                continue
            if k >= size:
                picks.append(torch.arange(start, start + size, device=x.device))
            else:
                picks.append(start + torch.topk(attn[start:start + size], k).indices)
        index = torch.cat(picks)[:keep] if picks else torch.zeros(0, dtype=torch.long, device=x.device)
        rows = x[index]
        missing = keep - index.numel()
        if missing > 0:
            rows = torch.cat([rows, torch.zeros(missing, dim, dtype=x.dtype, device=x.device)])
            index = torch.cat([index, torch.full((missing,), -1, dtype=torch.long, device=x.device)])
        kept_rows.append(rows)
        kept_indices.append(index)
    return torch.stack(kept_rows), torch.stack(kept_indices)
