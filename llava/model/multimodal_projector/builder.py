"""The vision -> LLM projector. Module layout matches LLaVA so checkpoints keep the key
names ``model.mm_projector.0.weight``, ``model.mm_projector.2.weight``..."""
from __future__ import annotations

import re

from torch import nn

PROJECTOR_TYPES = ("linear", "mlp<N>x_gelu", "identity")


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self):
        return {"mm_projector_type": "identity"}


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    projector_type = getattr(config, "mm_projector_type", "linear")
    if projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match:
        depth = int(match.group(1))
        if depth < 1:
            raise ValueError(f"mm_projector_type={projector_type!r} needs depth >= 1")
        layers = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        return IdentityMap()
    raise ValueError(f"unknown mm_projector_type {projector_type!r}; accepted: {PROJECTOR_TYPES}")
