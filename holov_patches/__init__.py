"""HoloV-LLaVA pruning library: pure tensor pruners, one registry, one config."""
from holov_patches.api import prune_visual_tokens
from holov_patches.config import ENV_VAR, MODES, PruningConfig, as_pruning_config, default_num_crops, resolve_pruning_config
from holov_patches.registry import get_pruner, list_pruners, register_pruner
from holov_patches.apply import apply  # holov_patches.apply(model, config) -> handle with remove()

__all__ = [
    "ENV_VAR", "MODES", "PruningConfig", "as_pruning_config", "default_num_crops", "resolve_pruning_config",
    "get_pruner", "list_pruners", "register_pruner", "prune_visual_tokens", "apply",
]
