"""HoloV-LLaVA pruning library: pure tensor pruners, one registry, one config.

``import holov_patches`` (and so ``import holov_patches.cli_args``, the flag table every
``--help`` reads) imports no torch: the registry and the config are plain Python, and the
torch-based names (``prune_visual_tokens``, ``apply``, the ``methods`` package) load on
first use (PEP 562). The built-in methods are still registered before any lookup: this
file installs their loader in the registry, and every lookup runs it first."""
from holov_patches import registry
from holov_patches.registry import get_pruner, list_pruners, register_pruner
from holov_patches.config import ENV_VAR, MODES, PruningConfig, as_pruning_config, default_num_crops, resolve_pruning_config

__all__ = [
    "ENV_VAR", "MODES", "PruningConfig", "as_pruning_config", "default_num_crops", "resolve_pruning_config",
    "get_pruner", "list_pruners", "register_pruner", "prune_visual_tokens", "apply",
]


def _load_methods() -> None:
    import holov_patches.methods  # noqa: F401  (its files register the built-in methods)


registry._builtin_loader = _load_methods


def __getattr__(name: str):
    # Never `from holov_patches import <name>` here: that asks this function again.
    if name == "prune_visual_tokens":
        from holov_patches.api import prune_visual_tokens as value
    elif name == "apply":  # holov_patches.apply(model, config) -> handle with remove()
        from holov_patches.adapters.apply import apply as value
    elif name == "methods":
        import holov_patches.methods

        return holov_patches.methods
    else:
        raise AttributeError(f"module 'holov_patches' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | {"methods"})
