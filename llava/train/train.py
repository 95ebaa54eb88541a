"""Fine-tune (or pretrain) LLaVA with visual-token pruning on.

    deepspeed llava/train/train_mem.py --deepspeed scripts/zero3.json \
        --model_name_or_path liuhaotian/llava-v1.5-7b --version v1 \
        --data_path llava_v1_5_mix665k.json --image_folder playground/data \
        --holov_tokens 64 --prune_method holov --output_dir checkpoints/llava-v1.5-7b-holov-64 ...

LLaVA's flags (see ``llava/train/arguments.py``) plus ``--holov_tokens --prune_ratio
--holov_crops --holov_mode --prune_method --holov_alpha``. The model is trained seeing
only the kept visual tokens (pruned after the projector, so the projector, and LoRA, get
gradients through the kept tokens only), and the setting is written into the output's
``config.json`` (``holov``), which ``load_pretrained_model`` applies when nothing
overrides it. ``scripts/v1_5/finetune_holov.sh`` has the LLaVA-1.5 hyper-parameters.
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Sequence

from llava.train.arguments import parse_args
from llava.train.data import make_supervised_data_module
from llava.train.llava_trainer import LLaVATrainer
from llava.train.model_setup import build


def _rank0_print(training_args, message: str) -> None:
    if training_args.process_index == 0:
        print(message, flush=True)


def train(argv: Optional[Sequence[str]] = None, attn_implementation: Optional[str] = None) -> str:
    """Run one training job from command-line style ``argv``; returns the output directory."""
    model_args, data_args, training_args, pruning_args = parse_args(argv)
    if not data_args.data_path:
        raise ValueError("--data_path is required")
    setup = build(model_args, data_args, training_args, pruning_args, attn_implementation)
    _rank0_print(training_args, f"[holov] training with visual-token pruning: "
                                f"{setup.pruning.describe() if setup.pruning else 'off'} (save mode: {setup.save_mode})")
    model = setup.model
    data_module = make_supervised_data_module(setup.tokenizer, data_args, setup.image_processor, model_args.version,
                                              model.config, training_args.model_max_length)
    trainer = LLaVATrainer(model=model, args=training_args, processing_class=setup.tokenizer,
                           save_mode=setup.save_mode, **data_module)
    resume = any(p.is_dir() for p in pathlib.Path(training_args.output_dir).glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_state()
    model.config.use_cache = True
    trainer.save_model(training_args.output_dir)
    return os.path.abspath(training_args.output_dir)


def main() -> None:
    train()


if __name__ == "__main__":
    main()
