"""Build the model and tokenizer a training run starts from.

Two starting points, as in LLaVA:
- a plain LLaMA/Vicuna (pretraining, or LLaVA-1.5's fine-tune from Vicuna + a pretrained
  projector): the tower and projector are created from the ``--vision_tower`` /
  ``--mm_*`` flags with ``initialize_vision_modules``;
- an existing LLaVA checkpoint (fine-tuning under pruning): its config fixes the
  architecture and its tower is loaded from ``mm_vision_tower``; ``--mm_*`` flags may only
  repeat what the checkpoint says.

Trainable parts: everything but the tower (full fine-tune), only the projector
(``--tune_mm_mlp_adapter``), or LoRA on the language model's linear layers plus the
projector (``--lora_enable``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, List, Optional

import torch
from transformers import AutoTokenizer, PretrainedConfig

from holov_patches import PruningConfig, resolve_pruning_config
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model.builder import llava_classes
from llava.train.arguments import FRESH_MM_DEFAULTS

NOT_LORA_TARGETS = ("mm_projector", "vision_tower", "vision_resampler", "lm_head")


@dataclass
class TrainSetup:
    model: Any  # LlavaLlamaForCausalLM, or a peft model around one
    tokenizer: Any
    image_processor: Any
    pruning: Optional[PruningConfig]
    save_mode: str  # "full", "projector" or "lora"


def torch_dtype(training_args) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def is_llava_checkpoint(path: str, cache_dir: Optional[str] = None) -> bool:
    """A LLaVA checkpoint names its vision tower in config.json; a plain language model does not."""
    config_dict, _ = PretrainedConfig.get_config_dict(path, cache_dir=cache_dir)
    return bool(config_dict.get("mm_vision_tower"))


def load_tokenizer(path: str, max_length: int, cache_dir: Optional[str] = None):
    """Right padding, LLaVA's pad token (unk) when the tokenizer has none."""
    tokenizer = AutoTokenizer.from_pretrained(path, cache_dir=cache_dir, model_max_length=max_length, padding_side="right")
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is None:
            raise ValueError(f"the tokenizer of {path} has neither a pad nor an unk token to pad with")
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _check_checkpoint_flags(config, model_args) -> None:
    """On a LLaVA checkpoint, --mm_* flags may only repeat the checkpoint's values."""
    for name in FRESH_MM_DEFAULTS:
        given = getattr(model_args, name)
        saved = getattr(config, name, FRESH_MM_DEFAULTS[name])
        if given is not None and given != saved:
            raise ValueError(f"--{name} {given!r} contradicts the checkpoint {model_args.model_name_or_path} ({name}={saved!r}); "
                             f"drop the flag to keep the checkpoint's architecture")


def _load_projector(model, path: str) -> None:
    weights = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.split("mm_projector.", 1)[1]: v for k, v in weights.items() if "mm_projector." in k}
    if not state:
        raise ValueError(f"--pretrain_mm_mlp_adapter {path} holds no mm_projector.* weights")
    projector = model.get_model().mm_projector
    with _gathered(list(projector.parameters()), modify=True):
        projector.load_state_dict(state)


def load_llava(model_args, training_args, attn_implementation: Optional[str]):
    """The model with its tower loaded and projector present (not yet frozen / LoRA-wrapped)."""
    path = model_args.model_name_or_path
    load_kwargs = dict(dtype=torch_dtype(training_args), cache_dir=training_args.cache_dir)
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    config_cls, model_cls = llava_classes(path)  # LLaMA or Mistral backbone, from config.json
    config = config_cls.from_pretrained(path, cache_dir=training_args.cache_dir)
    config._name_or_path = path  # a relative mm_vision_tower resolves beside the checkpoint
    if is_llava_checkpoint(path, training_args.cache_dir):
        _check_checkpoint_flags(config, model_args)
        model = model_cls.from_pretrained(path, config=config, **load_kwargs)
        tower = model.get_vision_tower()
        if model_args.vision_tower is not None and model_args.vision_tower not in (config.mm_vision_tower, tower.vision_tower_name):
            raise ValueError(f"--vision_tower {model_args.vision_tower!r} contradicts the checkpoint's mm_vision_tower "
                             f"{config.mm_vision_tower!r}")
        tower.load_model()
        if model_args.pretrain_mm_mlp_adapter:
            _load_projector(model, model_args.pretrain_mm_mlp_adapter)
    else:
        if not model_args.vision_tower:
            raise ValueError(f"{path} is a plain language model: give --vision_tower (e.g. openai/clip-vit-large-patch14-336)")
        model = model_cls.from_pretrained(path, config=config, **load_kwargs)
        fresh = {name: getattr(model_args, name) if getattr(model_args, name) is not None else default
                 for name, default in FRESH_MM_DEFAULTS.items()}
        model.get_model().initialize_vision_modules(SimpleNamespace(
            vision_tower=model_args.vision_tower, pretrain_mm_mlp_adapter=model_args.pretrain_mm_mlp_adapter, **fresh))
        model.config.mm_use_im_start_end = fresh["mm_use_im_start_end"]
        model.config.mm_use_im_patch_token = fresh["mm_use_im_patch_token"]
        tower = model.get_vision_tower()
    tower.to(dtype=load_kwargs["dtype"], device=training_args.device)
    # The saved checkpoint must find the tower wherever it is written: store the resolved
    # location (an absolute path for a local tower, the hub id otherwise).
    model.config.mm_vision_tower = tower.vision_tower_name
    model.config.use_cache = False
    return model


def add_image_tokens(model, tokenizer) -> None:
    """LLaVA's optional <im_patch> / <im_start> <im_end> tokens (new rows start at the mean embedding)."""
    if getattr(model.config, "mm_use_im_patch_token", False):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(model.config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    old = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 partitions it to [0]
    if len(tokenizer) <= old:
        return
    model.resize_token_embeddings(len(tokenizer))
    weights = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    with _gathered(weights, modify=True), torch.no_grad():
        for emb in weights:
            emb[old:] = emb[:old].mean(dim=0, keepdim=True)


def _gathered(params, modify: bool = False):
    """Full views of ZeRO-3 partitioned parameters (written back when ``modify``); a no-op otherwise."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


def lora_target_modules(model) -> List[str]:
    """Full names of the language model's Linear layers (not the tower, projector or head);
    full names, because the CLIP tower has q_proj/k_proj/v_proj of its own."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not any(skip in name for skip in NOT_LORA_TARGETS)]


def wrap_lora(model, training_args):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=training_args.lora_r, lora_alpha=training_args.lora_alpha, lora_dropout=training_args.lora_dropout,
                        target_modules=lora_target_modules(model), bias=training_args.lora_bias, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def training_pruning(model, explicit: Optional[PruningConfig]) -> Optional[PruningConfig]:
    """The setting trained with (flag > HOLOV_PRUNING > the starting checkpoint's), written
    into the config so that inference of the result uses it too."""
    saved = getattr(model.config, "holov", None)
    cfg = resolve_pruning_config(explicit=explicit, saved=saved)
    model.set_pruning(cfg)
    if cfg is not None:
        model.config.holov = cfg.to_dict()
    elif saved is not None:
        model.config.holov = PruningConfig(method="none").to_dict()  # trained without: infer without
    return cfg


def build(model_args, data_args, training_args, pruning_args, attn_implementation: Optional[str] = None) -> TrainSetup:
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required")
    if model_args.tune_mm_mlp_adapter and training_args.lora_enable:
        raise ValueError("--tune_mm_mlp_adapter and --lora_enable exclude each other: pick one")
    model = load_llava(model_args, training_args, attn_implementation)
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.model_max_length, training_args.cache_dir)
    pruning = training_pruning(model, pruning_args.to_config())

    cfg = model.config
    cfg.image_aspect_ratio = data_args.image_aspect_ratio or getattr(cfg, "image_aspect_ratio", None) or "square"
    data_args.image_aspect_ratio = cfg.image_aspect_ratio
    cfg.tokenizer_padding_side = tokenizer.padding_side
    cfg.tokenizer_model_max_length = tokenizer.model_max_length
    cfg.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    cfg.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    cfg.mm_projector_lr = training_args.mm_projector_lr

    add_image_tokens(model, tokenizer)  # before freezing: resizing makes new embedding parameters
    projector = model.get_model().mm_projector
    if model_args.freeze_backbone:
        model.get_model().requires_grad_(False)
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        if getattr(cfg, "mm_use_im_start_end", False):  # LLaVA trains the new tokens' input rows with the projector
            model.get_input_embeddings().weight.requires_grad_(True)
    if training_args.activation_checkpointing:
        model.enable_input_require_grads()
    save_mode = "projector" if model_args.tune_mm_mlp_adapter else "full"
    if training_args.lora_enable:
        model = wrap_lora(model, training_args)
        save_mode = "lora"
    projector.requires_grad_(not training_args.freeze_mm_mlp_adapter)
    model.get_vision_tower().requires_grad_(False)
    return TrainSetup(model, tokenizer, model.get_vision_tower().image_processor, pruning, save_mode)
