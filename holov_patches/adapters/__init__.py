"""Thin adapters that turn visual-token pruning on for transformers model instances.

``holov_patches.adapters.apply.apply(model, config)`` (re-exported as
``holov_patches.apply``) dispatches on ``model.config.model_type``; ``base`` holds what
every family shares; one file per family."""
