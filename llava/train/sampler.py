"""``group_by_modality_length``: batches that hold only image samples or only text-only
samples, each grouped by length (LLaVA-1.5's sampler, re-written).

Why: a batch mixing a 600-token image sample with a 20-token text answer wastes most of
the padded compute, and a text-only row costs a dummy image through the tower. Indices are
shuffled within each modality, cut into "megabatches" of ``batch_size * world_size``
(the batches the ranks and accumulation steps consume together), and each megabatch is
sorted by length, longest first, so its batches hold similar lengths; the megabatches of
both modalities are then shuffled together, with the two leftover partial megabatches
merged into one that goes last.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils.data import Sampler


def _megabatches(indices: torch.Tensor, lengths: torch.Tensor, megabatch_size: int) -> List[List[int]]:
    """Cut shuffled ``indices`` into megabatches, each sorted by decreasing length."""
    out = []
    for chunk in torch.split(indices, megabatch_size):
        order = torch.argsort(lengths[chunk], descending=True, stable=True)
        out.append(chunk[order].tolist())
    return out


def modality_length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                                    generator: Optional[torch.Generator] = None) -> List[int]:
    """A permutation of ``range(len(lengths))``; ``lengths`` > 0 marks image samples, < 0 text-only."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size={batch_size} and world_size={world_size} must be >= 1")
    lengths_t = torch.tensor(list(lengths), dtype=torch.long)
    if (lengths_t == 0).any():
        raise ValueError("a modality length of 0 is ambiguous: image samples are > 0, text-only samples < 0")
    megabatch_size = batch_size * world_size
    groups = []
    for mask in (lengths_t > 0, lengths_t < 0):
        idx = torch.nonzero(mask).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        groups.append(_megabatches(idx, lengths_t.abs(), megabatch_size))
    full = [mb for group in groups for mb in group if len(mb) == megabatch_size]
    leftover = [i for group in groups for mb in group if len(mb) < megabatch_size for i in mb]
    order = torch.randperm(len(full), generator=generator).tolist()
    megabatches = [full[i] for i in order]
    if leftover:
        megabatches.append(leftover)
    return [i for mb in megabatches for i in mb]


class ModalityLengthGroupedSampler(Sampler[int]):
    """A fresh grouped permutation every epoch (shared seed across ranks via ``generator``)."""

    def __init__(self, batch_size: int, world_size: int, lengths: Sequence[int], generator: Optional[torch.Generator] = None):
        self.batch_size, self.world_size = batch_size, world_size
        self.lengths = list(lengths)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, self.generator))
