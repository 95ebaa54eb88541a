"""HoloV-LLaVA pruning library: pure tensor pruners, one registry, one config.

Import order matters only in one way: ``methods`` is imported after ``registry`` and
``config`` so that every built-in method is registered before anyone can look one up."""
from holov_patches.registry import get_pruner, list_pruners, register_pruner
from holov_patches.config import ENV_VAR, MODES, PruningConfig, as_pruning_config, default_num_crops, resolve_pruning_config
from holov_patches import methods  # noqa: F401  (registers the built-in methods)
from holov_patches.api import prune_visual_tokens
from holov_patches.adapters.apply import apply  # holov_patches.apply(model, config) -> handle with remove()

__all__ = [
    "ENV_VAR", "MODES", "PruningConfig", "as_pruning_config", "default_num_crops", "resolve_pruning_config",
    "get_pruner", "list_pruners", "register_pruner", "prune_visual_tokens", "apply",
]
