"""LLaVA's Trainer: modality-grouped batches, a separate projector learning rate, and
checkpoints in the three layouts ``load_pretrained_model`` reads back.

- ``save_mode="full"``: the whole model but the frozen tower (HF ``save_pretrained``),
  tokenizer included.
- ``save_mode="projector"`` (``--tune_mm_mlp_adapter``): only ``mm_projector.bin`` (keys
  ``model.mm_projector.*``) and ``config.json``; load with ``model_base`` = the start model.
- ``save_mode="lora"``: the peft adapter, ``non_lora_trainables.bin`` (the projector and any
  other trained non-LoRA weights) and ``config.json``; load with ``model_base``.

Every layout carries the training's pruning setting in ``config.json`` (``holov``), and
intermediate ``checkpoint-N`` folders use the same layout as the final one. Every layout is
also written so that the original LLaVA code at transformers 4.37 loads it
(``llava.model.checkpoint_compat``: 4.x config keys, ``tokenizer.model`` + ``legacy``, and an
``adapter_config.json`` an older peft accepts).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from transformers import Trainer

from llava.model.checkpoint_compat import make_checkpoint_compatible
from llava.train.sampler import ModalityLengthGroupedSampler

SAVE_MODES = ("full", "projector", "lora")
PEFT_PREFIX = "base_model.model."
TOWER_KEY = "model.vision_tower."


class LLaVATrainer(Trainer):
    def __init__(self, *args, save_mode: str = "full", **kwargs):
        if save_mode not in SAVE_MODES:
            raise ValueError(f"save_mode={save_mode!r} is not one of {SAVE_MODES}")
        self.save_mode = save_mode
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------ sampling
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        lengths = getattr(dataset, "modality_lengths", None)
        if lengths is None:
            raise ValueError("--group_by_modality_length needs a dataset with modality_lengths (LazySupervisedDataset)")
        return ModalityLengthGroupedSampler(self.args.train_batch_size,
                                            self.args.world_size * self.args.gradient_accumulation_steps, lengths)

    # ------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        """With ``mm_projector_lr``: four groups, (decay, no decay) x (projector, rest)."""
        if self.optimizer is not None or self.args.mm_projector_lr is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: Dict[tuple, list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((name in decay, "mm_projector" in name), []).append(param)
        param_groups = [{"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0,
                         **({"lr": self.args.mm_projector_lr} if is_projector else {})}
                        for (decayed, is_projector), params in groups.items()]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)) or \
                {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ValueError(f"--mm_projector_lr needs a standard torch optimizer (e.g. adamw_torch), not --optim {self.args.optim}")
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------ saving
    def _base_model(self):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.save_mode == "full":
            # The tower stays frozen and is read from mm_vision_tower, as in LLaVA's releases:
            # leave it out of the weights.
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model, keep_torch_compile=False).state_dict()
            super()._save(output_dir, {k: v for k, v in state_dict.items() if TOWER_KEY not in k})
            if self.args.should_save:
                make_checkpoint_compatible(output_dir, self.processing_class)
            return
        if self.save_mode == "lora":
            super()._save(output_dir, state_dict)  # the peft adapter (and tokenizer)
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if state_dict is None:
            state_dict = model.state_dict()
        trained = {name for name, p in model.named_parameters() if p.requires_grad}
        if self.save_mode == "projector":
            weights = {_strip_peft(k): v for k, v in state_dict.items() if "mm_projector" in k or (k in trained and "embed_tokens" in k)}
            torch.save(_cpu(weights), os.path.join(output_dir, "mm_projector.bin"))
        else:
            weights = {k: v for k, v in state_dict.items() if k in trained and "lora_" not in k}
            torch.save(_cpu(weights), os.path.join(output_dir, "non_lora_trainables.bin"))
        self._base_model().config.save_pretrained(output_dir)
        make_checkpoint_compatible(output_dir, self.processing_class)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resuming (without DeepSpeed, whose engine checkpoint holds everything): the
        projector / non-LoRA layouts are not ones HF's loader knows, so read them here."""
        if self.save_mode == "full":
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.save_mode == "lora":
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # the adapter
        target = self.model if model is None else model
        name = "mm_projector.bin" if self.save_mode == "projector" else "non_lora_trainables.bin"
        path = os.path.join(resume_from_checkpoint, name)
        if not os.path.isfile(path):
            raise ValueError(f"cannot resume from {resume_from_checkpoint}: it has no {name} (save mode {self.save_mode!r})")
        weights = torch.load(path, map_location="cpu", weights_only=True)
        unexpected = target.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{path} holds weights the model lacks: {unexpected[:5]}")


    def _issue_warnings_after_load(self, load_result) -> None:
        # Checkpoints leave the frozen tower out on purpose (see _save): not "missing".
        missing = [k for k in load_result.missing_keys if TOWER_KEY not in k]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))


def _strip_peft(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def _cpu(weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in weights.items()}
