"""Build the vision tower named by ``mm_vision_tower`` (or ``vision_tower``)."""
from __future__ import annotations

import os

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower


def looks_like_local_path(path: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else (absolute, ./, ~, deeper) is a path."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path)


def resolve_vision_tower_path(name: str, model_path: str | None = None) -> str:
    """A relative ``mm_vision_tower`` that exists beside the checkpoint wins over a hub id,
    so a checkpoint directory with its tower inside can be moved as a whole."""
    if model_path and not os.path.isabs(name):
        candidate = os.path.join(model_path, name)
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return name


def build_vision_tower(vision_tower_cfg, delay_load: bool = False, **kwargs) -> CLIPVisionTower:
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if not name:
        raise ValueError("the config names no vision tower: set mm_vision_tower to a CLIP hub id or a local path")
    name = resolve_vision_tower_path(name, getattr(vision_tower_cfg, "_name_or_path", None))
    if looks_like_local_path(name) and not os.path.isdir(name):
        raise ValueError(f"mm_vision_tower={name!r} is not a folder here (nor beside the checkpoint) and not a hub id "
                         "of the form owner/name: point it at the CLIP tower's folder or hub id")
    return CLIPVisionTower(name, args=vision_tower_cfg, delay_load=delay_load, **kwargs)
