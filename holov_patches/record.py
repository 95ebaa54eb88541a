"""``PruningRecord``: the one record of what a pruned forward kept, written by our llava
path (``model.last_pruning``) and by every transformers adapter (``handle.last_prefill``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import torch


@dataclass
class PruningRecord:
    """Per image, in the order the images were given:

    - ``kept_index`` [K]: positions in the image's own token list (newlines not counted) as
      the pruner returned them; -1 marks a zero pad (faithful HoloV only);
    - ``num_tokens``: the image's visual tokens before pruning; ``grids``: (rows, cols) of
      its token map when it is one 2-D grid, else None; ``parts``: for an image made of
      several 2-D parts (LLaVA-NeXT: base tile, unpadded high-res map), their (rows, cols)
      in token-list order, else None;
    - ``offsets`` [n]: for every embedding the language model receives for the image (kept
      tokens and kept newlines), its offset inside the image's unpruned run of ``spans``
      embeddings (newlines counted); a zero pad takes the run's last offset.

    Sequence-level fields, filled where the integration rebuilds the sequence:
    ``position_ids`` (what the language model received), ``source`` [B, L'] (adapters: the
    original column of every pruned-sequence column, -1 for an added left pad),
    ``original_length`` / ``pruned_length`` and ``cache_ref`` (a weak reference to the
    prefill's cache, so decoding steps can tell that they continue it)."""

    kept_index: List[torch.Tensor] = field(default_factory=list)
    num_tokens: List[int] = field(default_factory=list)
    grids: List[Optional[Tuple[int, int]]] = field(default_factory=list)
    offsets: List[torch.Tensor] = field(default_factory=list)
    spans: List[int] = field(default_factory=list)
    parts: List[Optional[List[Tuple[int, int]]]] = field(default_factory=list)
    position_ids: Optional[torch.Tensor] = None
    source: Optional[torch.Tensor] = None
    original_length: Optional[int] = None
    pruned_length: Optional[int] = None
    cache_ref: Optional[Callable[[], Any]] = None

    def add_image(self, kept_index: torch.Tensor, num_tokens: int, grid: Optional[Tuple[int, int]],
                  offsets: torch.Tensor, span: int, parts: Optional[List[Tuple[int, int]]] = None) -> None:
        self.kept_index.append(kept_index)
        self.num_tokens.append(int(num_tokens))
        self.grids.append(grid)
        self.offsets.append(offsets)
        self.spans.append(int(span))
        self.parts.append(parts)

    @property
    def num_pruned(self) -> int:
        """Embeddings the language model did not receive, over all images."""
        return sum(self.spans) - sum(int(o.numel()) for o in self.offsets)
