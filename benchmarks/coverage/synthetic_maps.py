"""Synthetic visual-token maps with known objects, for comparing pruners without weights.

A real LLaVA image gives 24 x 24 projected tokens and a [CLS] attention map, but no
ground truth of what a pruner should keep. These maps are built so that the answer is
known by construction and the failure HoloV targets shows up:

- background: one direction plus a smooth, low-frequency texture (neighbouring tokens
  are similar, far-apart ones less so), [CLS] attention level ``background_attn``;
- a large uniform region ("sky"): near-duplicate tokens, background attention;
- ordinary objects: squares of ``object_sizes`` patches (1 x 1 up to 5 x 5 by default),
  each with its own feature direction, attention ``object_attn``;
- one salient object (``salient_size`` squared patches, its own direction) whose
  attention ``salient_attn`` dwarfs everything else: an attention-first pruner with
  K <= salient_size**2 keeps nothing else.

Attention levels get log-normal noise and each map's attention is normalised to sum to
1, like a softmax row. Objects never touch (``margin`` free patches around each), so a
token belongs to exactly one object or to the background. Everything is drawn from a
local ``torch.Generator`` seeded per map: the same seed gives the same map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

BACKGROUND, UNIFORM = -1, -2  # object_id of the two non-object kinds of token
MAX_LAYOUT_ATTEMPTS = 100
SALIENT = 0  # object_id of the salient object; ordinary objects are 1..len(object_sizes)


@dataclass(frozen=True)
class MapSpec:
    """Layout and statistics of one family of synthetic maps (the defaults mimic LLaVA-1.5's 24 x 24)."""

    rows: int = 24
    cols: int = 24
    dim: int = 64
    object_sizes: Tuple[int, ...] = (1, 1, 2, 2, 3, 3, 4, 5)
    salient_size: int = 6
    uniform_size: Tuple[int, int] = (8, 12)
    salient_attn: float = 40.0
    object_attn: float = 4.0
    background_attn: float = 1.0
    attn_noise: float = 0.3  # std of the log-normal attention noise
    texture: float = 0.6  # norm scale of the background texture relative to the background direction
    token_noise: float = 0.05  # norm of the per-token noise on the background
    object_noise: float = 0.15  # norm of the per-token noise inside an object
    uniform_noise: float = 0.01  # norm of the noise inside the near-duplicate region
    texture_waves: int = 4
    margin: int = 1

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "dim", "salient_size", "texture_waves"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"margin={self.margin!r} must be an integer >= 0")
        sides = tuple(self.object_sizes) + tuple(self.uniform_size)
        if len(self.uniform_size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
            raise ValueError(f"object_sizes={self.object_sizes!r} and uniform_size={self.uniform_size!r} "
                             f"must hold integers >= 1 (uniform_size: (rows, cols))")
        square = max((*self.object_sizes, self.salient_size))
        if square > min(self.rows, self.cols) or self.uniform_size[0] > self.rows or self.uniform_size[1] > self.cols:
            raise ValueError(f"object_sizes={self.object_sizes!r}, salient_size={self.salient_size!r} or "
                             f"uniform_size={self.uniform_size!r} does not fit the {self.rows} x {self.cols} grid")
        if not self.salient_attn > self.object_attn > self.background_attn > 0:
            raise ValueError(f"attention levels must satisfy salient_attn={self.salient_attn!r} > object_attn="
                             f"{self.object_attn!r} > background_attn={self.background_attn!r} > 0")
        for name in ("attn_noise", "texture", "token_noise", "object_noise", "uniform_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")

    @property
    def num_tokens(self) -> int:
        return self.rows * self.cols

    @property
    def num_objects(self) -> int:
        """Objects a pruner should cover: the salient one plus the ordinary ones."""
        return 1 + len(self.object_sizes)

    @classmethod
    def small(cls) -> "MapSpec":
        """A 12 x 12 map (144 tokens) for fast tests: 6 objects, a 4 x 4 salient one."""
        return cls(rows=12, cols=12, dim=32, object_sizes=(1, 1, 2, 2, 3), salient_size=4, uniform_size=(4, 6))


@dataclass(frozen=True)
class SyntheticMap:
    tokens: torch.Tensor  # [1, N, D] float32
    cls_attn: torch.Tensor  # [1, N] float32, sums to 1
    object_id: torch.Tensor  # [N] int64: SALIENT, 1..num_objects-1, BACKGROUND or UNIFORM
    boxes: Tuple[Tuple[int, int, int, int], ...]  # (row, col, height, width) of the uniform region, salient, objects
    grid: Tuple[int, int]
    num_objects: int


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _noise(shape, norm: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian vectors whose expected norm is about ``norm`` (per-coordinate std norm / sqrt(D))."""
    return torch.randn(shape, generator=generator) * (norm / math.sqrt(shape[-1]))


def _free_corners(occupied: torch.Tensor, height: int, width: int, margin: int) -> torch.Tensor:
    """Top-left corners [F, 2] where a height x width box, grown by ``margin``, touches nothing occupied."""
    padded = F.pad(occupied.float()[None, None], (margin, margin, margin, margin))  # [1, 1, rows + 2m, cols + 2m]
    busy = F.max_pool2d(padded, kernel_size=(height + 2 * margin, width + 2 * margin), stride=1)[0, 0]  # [rows-h+1, cols-w+1]
    return (busy == 0).nonzero()


def _layout(spec: MapSpec, gen: torch.Generator) -> Optional[Tuple[torch.Tensor, List[Tuple[int, int, int, int]]]]:
    """Object ids [rows, cols] and boxes, each box at a uniformly drawn free corner; None when one does not fit.

    Order: the uniform region, the salient object, then the ordinary objects, largest first."""
    occupied = torch.zeros(spec.rows, spec.cols, dtype=torch.bool)
    object_id = torch.full((spec.rows, spec.cols), BACKGROUND, dtype=torch.long)
    ordinary = sorted(range(len(spec.object_sizes)), key=lambda i: -spec.object_sizes[i])
    layout = [(UNIFORM, spec.uniform_size), (SALIENT, (spec.salient_size,) * 2)] + \
             [(1 + i, (spec.object_sizes[i],) * 2) for i in ordinary]
    boxes: List[Tuple[int, int, int, int]] = []
    for ident, (height, width) in layout:
        free = _free_corners(occupied, height, width, spec.margin)
        if free.shape[0] == 0:
            return None
        row, col = free[torch.randint(free.shape[0], (1,), generator=gen)].squeeze(0).tolist()
        occupied[row:row + height, col:col + width] = True
        object_id[row:row + height, col:col + width] = ident
        boxes.append((row, col, height, width))
    return object_id, boxes


def make_map(seed: int, spec: MapSpec = MapSpec()) -> SyntheticMap:
    """One synthetic token map, fully determined by ``seed`` and ``spec``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows, cols, dim = spec.rows, spec.cols, spec.dim

    for _ in range(MAX_LAYOUT_ATTEMPTS):  # rejection sampling: redraw the whole layout when an object does not fit
        placed = _layout(spec, gen)
        if placed is not None:
            break
    else:
        raise ValueError(f"could not place the objects of {spec} in {MAX_LAYOUT_ATTEMPTS} attempts; "
                         f"use a larger grid or fewer / smaller objects")
    object_id, boxes = placed
    object_id = object_id.flatten()  # [N]

    # Features: one direction per kind (random Gaussian directions are nearly orthogonal in D >= 32).
    directions = _unit(torch.randn(spec.num_objects + 2, dim, generator=gen))  # [objects + 2, D]
    background_dir, uniform_dir, object_dirs = directions[0], directions[1], directions[2:]
    r = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols) / rows  # [N]
    c = torch.arange(cols, dtype=torch.float32).repeat(rows) / cols  # [N]
    freq = 0.5 + 1.5 * torch.rand(spec.texture_waves, 2, generator=gen)  # [W, 2] cycles per image side
    phase = 2 * math.pi * torch.rand(spec.texture_waves, generator=gen)  # [W]
    waves = torch.sin(2 * math.pi * (r[:, None] * freq[:, 0] + c[:, None] * freq[:, 1]) + phase)  # [N, W]
    wave_dirs = _unit(torch.randn(spec.texture_waves, dim, generator=gen))  # [W, D]
    texture = spec.texture * (waves @ wave_dirs) / math.sqrt(spec.texture_waves)  # [N, D]

    num = rows * cols
    tokens = background_dir + texture + _noise((num, dim), spec.token_noise, gen)  # [N, D]
    is_uniform = object_id == UNIFORM
    tokens[is_uniform] = uniform_dir + _noise((int(is_uniform.sum()), dim), spec.uniform_noise, gen)
    is_object = object_id >= 0
    tokens[is_object] = object_dirs[object_id[is_object]] + _noise((int(is_object.sum()), dim), spec.object_noise, gen)

    level = torch.full((num,), float(spec.background_attn))
    level[is_object] = spec.object_attn
    level[object_id == SALIENT] = spec.salient_attn
    attn = level * torch.exp(spec.attn_noise * torch.randn(num, generator=gen))
    attn = attn / attn.sum()
    return SyntheticMap(tokens=tokens[None], cls_attn=attn[None], object_id=object_id, boxes=tuple(boxes),
                        grid=(rows, cols), num_objects=spec.num_objects)
