"""Importing this package registers every built-in pruning method."""
from holov_patches import holov  # noqa: F401  (registers "holov")
