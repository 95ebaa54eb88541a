"""Command-line arguments of ``llava/train/train.py``: LLaVA's original flag names, plus the
visual-token pruning flags of HoloV-LLaVA.

The multimodal model fields default to ``None``, meaning "what the checkpoint says" when
``--model_name_or_path`` is already a LLaVA checkpoint, and LLaVA's own default when the
vision modules are built fresh on a plain language model (pretraining). That way a
fine-tune of an existing LLaVA checkpoint cannot silently change its architecture.
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Optional

import transformers

from holov_patches import PruningConfig
from holov_patches.cli_args import FLAG_NAMES, pruning_config_from_values, pruning_dataclass_fields

# LLaVA's defaults, applied when vision modules are created on a plain language model.
FRESH_MM_DEFAULTS = {
    "mm_projector_type": "linear",
    "mm_vision_select_layer": -1,
    "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "flat",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": True,
}


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "a plain LLaMA/Vicuna (pretraining) or a LLaVA checkpoint (fine-tuning)"})
    version: str = field(default="v1", metadata={"help": "conversation template: v1/vicuna_v1, plain (pretraining captions), llama_2, ..."})
    freeze_backbone: bool = field(default=False, metadata={"help": "freeze the language model"})
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "train only the projector; saves mm_projector.bin"})
    vision_tower: Optional[str] = field(default=None, metadata={"help": "CLIP tower (hub id or path); default: the checkpoint's mm_vision_tower"})
    mm_vision_select_layer: Optional[int] = field(default=None, metadata={"help": "tower layer whose features are used (LLaVA-1.5: -2)"})
    mm_vision_select_feature: Optional[str] = field(default=None, metadata={"help": "'patch' or 'cls_patch'"})
    pretrain_mm_mlp_adapter: Optional[str] = field(default=None, metadata={"help": "mm_projector.bin from a pretraining run"})
    mm_projector_type: Optional[str] = field(default=None, metadata={"help": "linear, mlp2x_gelu, ... (LLaVA-1.5: mlp2x_gelu)"})
    mm_use_im_start_end: Optional[bool] = field(default=None, metadata={"help": "wrap <image> in <im_start>/<im_end> tokens"})
    mm_use_im_patch_token: Optional[bool] = field(default=None, metadata={"help": "add the <im_patch> token"})
    mm_patch_merge_type: Optional[str] = field(default=None, metadata={"help": "flat, spatial, spatial_unpad"})


@dataclass
class DataArguments:
    data_path: Optional[str] = field(default=None, metadata={"help": "LLaVA json: [{id, image?, conversations: [{from, value}]}]"})
    lazy_preprocess: bool = field(default=True, metadata={"help": "tokenize in __getitem__ (the only mode; kept for LLaVA's scripts)"})
    is_multimodal: bool = field(default=True, metadata={"help": "set from the model; kept for LLaVA's scripts"})
    image_folder: Optional[str] = field(default=None, metadata={"help": "folder the json's image paths are relative to"})
    image_aspect_ratio: Optional[str] = field(default=None, metadata={"help": "square, pad (LLaVA-1.5) or anyres; default: the checkpoint's, else square"})


def _to_config(self) -> Optional[PruningConfig]:
    """``None`` when no flag was given (then HOLOV_PRUNING or the checkpoint's saved setting applies)."""
    return pruning_config_from_values({name: getattr(self, name) for name in FLAG_NAMES})


# The HoloV-LLaVA pruning flags, generated from the one table (holov_patches.cli_args.FLAGS):
# spelt with underscores here, as LLaVA's training flags are.
PruningArguments = make_dataclass("PruningArguments", pruning_dataclass_fields(), namespace={"to_config": _to_config})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False: images are not model inputs HF knows"})
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "keep the projector frozen"})
    model_max_length: int = field(default=512, metadata={"help": "maximum sequence length; longer samples are truncated"})
    lora_enable: bool = field(default=False, metadata={"help": "train LoRA adapters on the language model's linear layers"})
    lora_r: int = field(default=64)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_weight_path: str = field(default="", metadata={"help": "unused; kept for LLaVA's scripts"})
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only"})
    mm_projector_lr: Optional[float] = field(default=None, metadata={"help": "learning rate of the projector (default: learning_rate)"})
    group_by_modality_length: bool = field(default=False, metadata={"help": "batches of image samples and of text-only samples, each grouped by length"})
    warmup_ratio: Optional[float] = field(default=None, metadata={"help": "LLaVA's name for a warmup fraction; transformers 5 takes it as a float warmup_steps"})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={
        "help": "resume from this checkpoint-N folder, or 'latest' for the newest checkpoint-N in --output_dir. "
                "Without it (or --auto_resume_trusted_checkpoints), an --output_dir that already holds checkpoints "
                "is refused rather than trained over"})
    auto_resume_trusted_checkpoints: bool = field(default=False, metadata={
        "help": "LLaVA's behaviour: resume from the newest checkpoint-N in --output_dir whenever there is one. "
                "This trusts whatever sits in --output_dir to be this run's own checkpoints: its weights, optimizer, "
                "scheduler and RNG state are loaded as they are (with weights_only=True, so no pickled code runs, "
                "but nothing checks that they come from this run, model or data)"})

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
            if self.warmup_steps:
                raise ValueError(f"give warmup_ratio ({self.warmup_ratio}) or warmup_steps ({self.warmup_steps}), not both")
            self.warmup_steps = self.warmup_ratio
        if self.lora_bias not in ("none", "all", "lora_only"):
            raise ValueError(f"lora_bias={self.lora_bias!r} is not one of ('none', 'all', 'lora_only')")
        if self.model_max_length < 1:
            raise ValueError(f"model_max_length={self.model_max_length} must be >= 1")
        if self.mm_projector_lr is not None and not self.mm_projector_lr > 0:
            raise ValueError(f"mm_projector_lr={self.mm_projector_lr} must be > 0")
        if self.resume_from_checkpoint is not None and not str(self.resume_from_checkpoint).strip():
            raise ValueError("--resume_from_checkpoint is empty; give a checkpoint-N folder or 'latest'")
        super().__post_init__()
        ds_config = getattr(getattr(self, "hf_deepspeed_config", None), "config", {})
        if self.mm_projector_lr is not None and "optimizer" in ds_config:
            raise ValueError(f"--mm_projector_lr {self.mm_projector_lr} cannot apply: the DeepSpeed config {self.deepspeed} "
                             f"builds its own optimizer (its 'optimizer' section); drop one of them")


def parse_args(argv=None):
    """(model_args, data_args, training_args, pruning_args) from ``argv`` (default sys.argv)."""
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, PruningArguments))
    return parser.parse_args_into_dataclasses(args=argv)
