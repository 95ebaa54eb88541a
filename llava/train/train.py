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

Resuming is explicit: ``--resume_from_checkpoint PATH|latest`` (or LLaVA's automatic resume
with ``--auto_resume_trusted_checkpoints``); checkpoints are read with ``weights_only=True``
(:mod:`llava.train.safe_load`), so a checkpoint cannot run code.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import List, Optional, Sequence

from llava.train.arguments import parse_args
from llava.train.data import load_samples, make_supervised_data_module, visual_tokens_per_image
from llava.train.llava_trainer import LLaVATrainer
from llava.train.model_setup import build
from llava.train.safe_load import weights_only_loads

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _rank0_print(training_args, message: str) -> None:
    if training_args.process_index == 0:
        print(message, flush=True)


def existing_checkpoints(output_dir: str) -> List[str]:
    """The checkpoint-N folders in ``output_dir``, oldest first."""
    folder = pathlib.Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), str(p)) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def resume_checkpoint(training_args) -> Optional[str]:
    """The checkpoint to resume from, decided before anything loads.

    ``--resume_from_checkpoint PATH`` or ``latest`` (the newest checkpoint-N of --output_dir);
    with neither, checkpoints already in --output_dir are an error, unless
    ``--auto_resume_trusted_checkpoints`` asks for LLaVA's automatic resume."""
    requested = training_args.resume_from_checkpoint
    found = existing_checkpoints(training_args.output_dir)
    if requested is None:
        if not found:
            return None
        if training_args.auto_resume_trusted_checkpoints:
            return found[-1]
        raise ValueError(
            f"--output_dir {training_args.output_dir} already holds {len(found)} checkpoint(s) "
            f"({os.path.basename(found[-1])} the newest). Pass --resume_from_checkpoint latest (or a checkpoint path) "
            f"to continue from them, --auto_resume_trusted_checkpoints to always do so, or another --output_dir")
    if requested == "latest":
        if not found:
            raise ValueError(f"--resume_from_checkpoint latest: --output_dir {training_args.output_dir} has no "
                             f"checkpoint-N folder to resume from")
        return found[-1]
    if not os.path.isdir(requested):
        raise ValueError(f"--resume_from_checkpoint {requested!r} is not a folder (give a checkpoint-N folder or 'latest')")
    if not os.path.isfile(os.path.join(requested, "trainer_state.json")):
        raise ValueError(f"--resume_from_checkpoint {requested!r} has no trainer_state.json: not a checkpoint "
                         f"folder written by a training run")
    return requested


def train(argv: Optional[Sequence[str]] = None, attn_implementation: Optional[str] = None) -> str:
    """Run one training job from command-line style ``argv``; returns the output directory."""
    model_args, data_args, training_args, pruning_args = parse_args(argv)
    if not data_args.data_path:
        raise ValueError("--data_path is required")
    # Everything that can be checked without the model is checked before it loads.
    resume = resume_checkpoint(training_args)
    samples = load_samples(data_args.data_path, data_args.image_folder)
    setup = build(model_args, data_args, training_args, pruning_args, attn_implementation)
    _rank0_print(training_args, f"[holov] training with visual-token pruning: "
                                f"{setup.pruning.describe() if setup.pruning else 'off'} (save mode: {setup.save_mode})")
    model = setup.model
    data_module = make_supervised_data_module(setup.tokenizer, data_args, setup.image_processor, model_args.version,
                                              model.config, training_args.model_max_length, samples=samples,
                                              image_seq_len=visual_tokens_per_image(model))
    trainer = LLaVATrainer(model=model, args=training_args, processing_class=setup.tokenizer,
                           save_mode=setup.save_mode, **data_module)
    if resume is not None:
        _rank0_print(training_args, f"[holov] resuming from {resume}")
    with weights_only_loads():  # DeepSpeed reads its checkpoints with weights_only=False otherwise
        trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    model.config.use_cache = True
    trainer.save_model(training_args.output_dir)
    out = os.path.abspath(training_args.output_dir)
    _rank0_print(training_args, f"[holov] checkpoint saved to {out}")
    return out


def main() -> None:
    train()


if __name__ == "__main__":
    main()
