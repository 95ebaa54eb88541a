"""Importing this package registers every built-in pruning method (one method per file)."""
from holov_patches.methods import cdpruner, cls_topk, dart, divprune, fastv, holov, random, visionzip, visionzip_projected, vispruner  # noqa: F401
