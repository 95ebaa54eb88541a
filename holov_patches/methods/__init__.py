"""Importing this package registers every built-in pruning method (one method per file)."""
from holov_patches.methods import cls_topk, divprune, fastv, holov, random, visionzip  # noqa: F401
