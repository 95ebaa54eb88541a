"""Importing this package registers every built-in pruning method."""
from holov_patches import holov  # noqa: F401  (registers "holov")
from holov_patches.methods import cls_topk, divprune, fastv, random, visionzip  # noqa: F401  (one method per file)
