"""LLaVA training with visual-token pruning: ``train.py`` (entry point), ``arguments.py``
(flags), ``model_setup.py`` (start model, freezing, LoRA, pruning setting), ``preprocess.py``
(conversation -> ids/labels), ``data.py`` (lazy dataset, collator), ``sampler.py``
(modality-grouped batches), ``llava_trainer.py`` (optimizer groups, checkpoint layouts)."""
