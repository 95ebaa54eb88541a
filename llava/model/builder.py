"""``load_pretrained_model``: LLaVA's single loader, for transformers 5.x.

Handles the original checkpoint kinds: a full LLaVA checkpoint, LoRA weights on a base
(``model_base`` + ``non_lora_trainables.bin`` + adapter), a projector-only checkpoint
(``mm_projector.bin`` on ``model_base``), and a plain language model. ``pruning=``
(a PruningConfig, dict or string) sets visual-token pruning; precedence is explicit
argument > ``HOLOV_PRUNING`` environment variable > the checkpoint's saved ``holov``
block > off, and the effective setting is printed once.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from holov_patches import resolve_pruning_config
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.builder import looks_like_local_path
from llava.utils import default_device
from llava.model.language_model.llava_mistral import LlavaMistralConfig, LlavaMistralForCausalLM

logger = logging.getLogger(__name__)
TOWER_PREFIX = "model.vision_tower.vision_tower."


def _dtype_and_quant(load_8bit: bool, load_4bit: bool, device: str, use_flash_attn: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig  # needs bitsandbytes and a GPU

        out["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=load_8bit, load_in_4bit=load_4bit, bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
    dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
    if dtype is None:
        # LLaVA loads in float16 on GPUs; float16 matmuls are slow or missing on CPU.
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    out["dtype"] = dtype
    attn = kwargs.pop("attn_implementation", None)
    if use_flash_attn:
        attn = "flash_attention_2"
    if attn is not None:
        out["attn_implementation"] = attn
    return out


def llava_classes(path: str):
    """(config class, model class) for a LLaVA checkpoint, from its config.json: a Mistral
    backbone by model_type / architectures (llava-v1.6-mistral), LLaMA otherwise."""
    from transformers import PretrainedConfig

    raw, _ = PretrainedConfig.get_config_dict(path)
    names = [raw.get("model_type", "")] + list(raw.get("architectures") or [])
    if any("mistral" in str(n).lower() for n in names):
        return LlavaMistralConfig, LlavaMistralForCausalLM
    return LlavaConfig, LlavaLlamaForCausalLM


def _load_config(path: str, customized_config=None):
    # The released LLaVA-1.5 checkpoints say model_type "llava", which transformers maps
    # to its own LlavaConfig; read the file with ours instead.
    config_cls, model_cls = llava_classes(path)
    if customized_config is not None:
        config = customized_config
    else:
        # from_dict, not from_pretrained: the file's model_type ("llava") is known to differ
        # from ours, and from_pretrained would warn about it on every load.
        raw, _ = config_cls.get_config_dict(path)
        config = config_cls.from_dict({k: v for k, v in raw.items() if k != "model_type"})
    config._name_or_path = path
    return config, model_cls


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, use_fast=False)


def _is_llava(model_name: str, config_path: str, multimodal: bool) -> bool:
    if multimodal or "llava" in model_name.lower():
        return True
    cfg_file = os.path.join(config_path, "config.json")
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            return "mm_vision_tower" in json.load(f)
    return False


_NOT_WEIGHTS = ("non_lora_trainables.bin", "mm_projector.bin", "training_args.bin")


def _files_with_tower_weights(model_path: str) -> List[str]:
    """Weight files of a local checkpoint that may hold tower keys. A sharded checkpoint's
    index names them, so a 7B checkpoint without tower weights costs no extra read."""
    if not os.path.isdir(model_path):
        return []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(model_path, index)
        if os.path.isfile(path):
            with open(path) as f:
                index_data = json.load(f)
            weight_map = index_data.get("weight_map") if isinstance(index_data, dict) else None
            if not isinstance(weight_map, dict):
                raise ValueError(f"{path} has no 'weight_map' (a sharded checkpoint's index must map each weight to its file)")
            return sorted({file for key, file in weight_map.items() if key.startswith(TOWER_PREFIX)})
    return sorted(f for f in os.listdir(model_path)
                  if f.endswith(".safetensors") or (f.endswith(".bin") and f not in _NOT_WEIGHTS))


def _load_tower_weights_from_checkpoint(model, model_path: str) -> int:
    """Checkpoints that carry the tower (``model.vision_tower.vision_tower.*``, with or
    without the 4.x ``vision_model.`` level) override the weights read from mm_vision_tower."""
    from safetensors import safe_open

    state: Dict[str, torch.Tensor] = {}
    for name in _files_with_tower_weights(model_path):
        path = os.path.join(model_path, name)
        if name.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:  # reads only the tensors asked for
                tensors = {key: f.get_tensor(key) for key in f.keys() if key.startswith(TOWER_PREFIX)}
        else:  # mmap: the shard's other tensors are never read
            tensors = {key: value for key, value in torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()
                       if key.startswith(TOWER_PREFIX)}
        state.update({key[len(TOWER_PREFIX):].replace("vision_model.", "", 1): value for key, value in tensors.items()})
    if state:
        tower = model.get_vision_tower().vision_tower
        missing, unexpected = tower.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"vision tower weights in {model_path} do not fit the tower: unexpected {unexpected[:5]}")
        if missing and len(missing) != len(tower.state_dict()):
            logger.warning("checkpoint tower weights cover only part of the tower; missing %s", missing[:5])
    return len(state)


def check_checkpoint_source(model_path: str, model_base: Optional[str]) -> None:
    """Fail before any weight is read, naming the path: a missing folder, a folder without
    config.json (transformers would build a default 7B model), a LoRA checkpoint without
    its base."""
    for what, path in (("--model-path", model_path), ("--model-base", model_base)):
        if path is None:
            continue
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ValueError(f"config.json not found in {path} ({what}): not a model checkpoint folder")
        elif os.path.exists(path):
            raise ValueError(f"{what} {path} is a file; give the checkpoint folder (or a hub id such as liuhaotian/llava-v1.5-7b)")
        elif looks_like_local_path(path):
            raise ValueError(f"{what} {path} does not exist (not a folder here, and not a hub id of the form owner/name)")
    if model_base is None and os.path.isdir(model_path) and any(
            os.path.isfile(os.path.join(model_path, f)) for f in ("adapter_config.json", "non_lora_trainables.bin")):
        raise ValueError(f"{model_path} is a LoRA checkpoint (it has adapter_config.json / non_lora_trainables.bin): "
                         "give the base model it was trained on with --model-base (e.g. lmsys/vicuna-7b-v1.5)")


def load_pretrained_model(model_path: str, model_base: Optional[str], model_name: str, load_8bit: bool = False,
                          load_4bit: bool = False, device_map="auto", device: Optional[str] = None, use_flash_attn: bool = False,
                          pruning=None, **kwargs) -> Tuple[Any, Any, Any, int]:
    """Returns ``(tokenizer, model, image_processor, context_len)`` like the original.

    ``device`` defaults to ``cuda`` when CUDA is available, else ``cpu``.
    Also accepts the keywords lmms-eval's ``llava`` wrapper passes (``multimodal``,
    ``attn_implementation``, ``customized_config``, ``overwrite_config``)."""
    check_checkpoint_source(model_path, model_base)
    # The original defaults to "cuda"; without CUDA that is a crash deep in loading (lmms-eval's
    # stock wrapper passes no device), so the default is cuda when there is one, else cpu.
    device = device or default_device()
    multimodal = bool(kwargs.pop("multimodal", False))
    customized_config = kwargs.pop("customized_config", None)
    overwrite_config = kwargs.pop("overwrite_config", None)
    load_kwargs = _dtype_and_quant(load_8bit, load_4bit, device, use_flash_attn, kwargs)
    if device != "cuda" and device_map in ("auto", None):
        device_map = {"": device}
    load_kwargs["device_map"] = device_map
    load_kwargs.update(kwargs)

    if not _is_llava(model_name, model_path, multimodal):
        from transformers import AutoModelForCausalLM

        src = model_base or model_path
        model = AutoModelForCausalLM.from_pretrained(model_path, **load_kwargs)
        tokenizer = _tokenizer(src)
        return tokenizer, model, None, getattr(model.config, "max_sequence_length", 2048)

    if model_base is not None and os.path.isfile(os.path.join(model_path, "non_lora_trainables.bin")) or \
            (model_base is not None and os.path.isfile(os.path.join(model_path, "adapter_config.json"))):
        model, tokenizer = _load_lora(model_path, model_base, load_kwargs, customized_config)
    elif model_base is not None:
        model, tokenizer = _load_projector_only(model_path, model_base, load_kwargs, customized_config)
    else:
        config, model_cls = _load_config(model_path, customized_config)
        if overwrite_config:
            for key, value in overwrite_config.items():
                setattr(config, key, value)
        tokenizer = _tokenizer(model_path)
        model = model_cls.from_pretrained(model_path, config=config, **load_kwargs)

    image_processor = _finish_multimodal(model, tokenizer, model_path, device_map, load_kwargs["dtype"])
    model.set_pruning(resolve_pruning_config(explicit=pruning, saved=getattr(model.config, "holov", None)))
    active = model.get_pruning()
    print(f"[holov] visual-token pruning: {active.describe() if active else 'off'}", flush=True)
    context_len = getattr(model.config, "max_sequence_length", 2048)
    return tokenizer, model, image_processor, context_len


def _finish_multimodal(model, tokenizer, model_path: str, device_map, dtype):
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN

    # The original's defaults: a config that does not say mm_use_im_patch_token counts as
    # True (it adds <im_patch>), and the embeddings always end up len(tokenizer) rows, so a
    # checkpoint with padded embedding rows is cut to the tokenizer (new rows are drawn as
    # 4.37 did: the model's own init, not 5.x's mean of the old rows).
    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(model.config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tower = model.get_vision_tower()
    if tower is None:
        raise ValueError(f"{model_path} has no mm_vision_tower in its config: it is not a multimodal LLaVA checkpoint")
    if not tower.is_loaded:
        tower.load_model(device_map=device_map if isinstance(device_map, dict) else None)
    _load_tower_weights_from_checkpoint(model, model_path)
    device = next(model.get_model().mm_projector.parameters(), model.lm_head.weight).device
    tower.to(device=device, dtype=dtype if isinstance(dtype, torch.dtype) else model.dtype)
    model.eval()
    return tower.image_processor


def _load_lora(model_path: str, model_base: str, load_kwargs, customized_config):
    from peft import PeftModel

    config, model_cls = _load_config(model_path, customized_config)
    tokenizer = _tokenizer(model_base)
    model = model_cls.from_pretrained(model_base, config=config, **load_kwargs)
    non_lora = os.path.join(model_path, "non_lora_trainables.bin")
    if os.path.isfile(non_lora):
        weights = torch.load(non_lora, map_location="cpu", weights_only=True)
        # Keys saved from a PeftModel carry "base_model.model." in front.
        weights = {k.split("base_model.model.", 1)[-1]: v for k, v in weights.items()}
        model.load_state_dict(weights, strict=False)
    model = PeftModel.from_pretrained(model, model_path)
    model = model.merge_and_unload()
    return model, tokenizer


def _load_projector_only(model_path: str, model_base: str, load_kwargs, customized_config):
    config, model_cls = _load_config(model_path, customized_config)
    tokenizer = _tokenizer(model_base)
    model = model_cls.from_pretrained(model_base, config=config, **load_kwargs)
    weights = torch.load(os.path.join(model_path, "mm_projector.bin"), map_location="cpu", weights_only=True)
    weights = {k: v.to(model.dtype) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"mm_projector.bin in {model_path} has keys the model lacks: {unexpected[:5]}")
    return model, tokenizer
