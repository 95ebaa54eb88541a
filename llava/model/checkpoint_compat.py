"""Make the checkpoints we write loadable by the original LLaVA code (transformers 4.37).

transformers 5.x writes a few things differently from the 4.x releases the original LLaVA
code (and most of the field's tools) run on. After a 5.x ``save_pretrained`` these
functions rewrite the files in place so both versions read the same model:

- ``config.json``: 5.x writes ``dtype`` and ``rope_parameters``; 4.37 reads ``torch_dtype``
  and ``rope_theta`` / ``rope_scaling`` (``{"type", "factor"}``). Both spellings are kept
  (5.x prefers its own when both are there). ``rope_scaling`` is written only for a
  non-default rope type.
- CLIP vision tower weights: 5.x's ``CLIPVisionModel`` has no ``vision_model`` wrapper and
  saves ``embeddings.*`` / ``encoder.*``; 4.x expects ``vision_model.embeddings.*`` and,
  given the short names, loads a randomly initialised tower with only a warning. Keys get
  the prefix back, in a tower folder and inside a LLaVA checkpoint
  (``model.vision_tower.vision_tower.vision_model.*``, as the original writes them).
  5.x loads the prefixed keys as well.
- The tokenizer: 5.x saves only ``tokenizer.json`` and drops ``legacy`` /
  ``add_bos_token`` from ``tokenizer_config.json`` (and may name its generic
  ``TokenizersBackend`` class there); the original loads the slow sentencepiece tokenizer
  (``use_fast=False``), which needs ``tokenizer.model``, the ``LlamaTokenizer`` class name and,
  without ``legacy: false``, tokenizes differently. All are written back.
- A LoRA ``adapter_config.json``: keys that newer peft versions write with their default
  value and older ones (as used with transformers 4.37) reject are dropped. A key with a
  non-default value (e.g. ``use_dora: true``) is kept: an old peft then fails loudly instead
  of loading a different adapter.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Dict, Iterable, Optional

logger = logging.getLogger(__name__)

CLIP_PREFIX = "vision_model."
LLAVA_TOWER_PREFIX = "model.vision_tower.vision_tower."
# 4.37's LlamaConfig accepts only these rope_scaling types, as {"type": ..., "factor": ...}.
ROPE_SCALING_4X = ("linear", "dynamic")
# LoraConfig fields that peft 0.8 (the peft of the transformers 4.37 era) knows; newer keys
# at their default value are left out of adapter_config.json.
OLD_PEFT_LORA_KEYS = frozenset({
    "peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type", "inference_mode",
    "r", "target_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias", "use_rslora",
    "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
    "alpha_pattern", "megatron_config", "megatron_core", "loftq_config",
})
NEUTRAL_VALUES = (None, False, {}, [], "")


# ------------------------------------------------------------------ config.json
def config_for_transformers4(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a config dict with the 4.x spellings added beside the 5.x ones (also in
    ``text_config`` / ``vision_config`` sub-dicts)."""
    out = dict(cfg)
    if "dtype" in out and out.get("torch_dtype") is None:
        out["torch_dtype"] = out["dtype"]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            out["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "default":
            pass  # 4.37's own default (rope_scaling None); writing the key makes 5.x warn
        elif rope_type in ROPE_SCALING_4X and set(rope) <= {"rope_type", "type", "factor", "rope_theta"}:
            out["rope_scaling"] = {"type": rope_type, "factor": rope["factor"]}
        else:
            # 4.37 cannot express this scaling; its validation then refuses the config
            # rather than silently running without it.
            out["rope_scaling"] = {"type": rope_type, **{k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta")}}
            logger.warning("rope_type %r has no transformers 4.37 equivalent; 4.x will refuse this config", rope_type)
    for sub in ("text_config", "vision_config"):
        if isinstance(out.get(sub), dict):
            out[sub] = config_for_transformers4(out[sub])
    return out


def write_config_for_transformers4(directory: str) -> None:
    """Rewrite ``directory/config.json`` with the 4.x spellings added (no-op without one)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        cfg = json.load(f)
    new = config_for_transformers4(cfg)
    if new != cfg:
        _write_json(path, new)


# ------------------------------------------------------------------ weights
def _prefixed(key: str, scope: str) -> str:
    """``key`` with ``vision_model.`` inserted after ``scope`` when it is a tower key without it."""
    if not key.startswith(scope):
        return key
    rest = key[len(scope):]
    return key if rest.startswith(CLIP_PREFIX) else scope + CLIP_PREFIX + rest


def add_vision_model_prefix(directory: str, scope: str = "") -> int:
    """Rename the CLIP tower keys under ``scope`` (``""`` for a tower folder,
    ``LLAVA_TOWER_PREFIX`` for a LLaVA checkpoint) in every safetensors / .bin weight file of
    ``directory`` (and the shard index) to carry ``vision_model.``. Returns how many keys
    were renamed."""
    renamed = 0
    index_files = [f for f in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                   if os.path.isfile(os.path.join(directory, f))]
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".safetensors"):
            renamed += _rename_safetensors(path, scope)
        elif name.endswith(".bin") and (name.startswith("pytorch_model") or name == "model.bin"):
            renamed += _rename_bin(path, scope)
    for index in index_files:
        path = os.path.join(directory, index)
        with open(path) as f:
            data = json.load(f)
        weight_map = {_prefixed(k, scope): v for k, v in data.get("weight_map", {}).items()}
        if weight_map != data.get("weight_map"):
            data["weight_map"] = weight_map
            _write_json(path, data)
    return renamed


def _rename_safetensors(path: str, scope: str) -> int:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata() or {}
        if all(_prefixed(k, scope) == k for k in keys):
            return 0
        tensors = {_prefixed(k, scope): f.get_tensor(k) for k in keys}
    metadata = {**metadata, "format": metadata.get("format", "pt")}  # 4.x refuses a file without it
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return sum(_prefixed(k, scope) != k for k in keys)


def _rename_bin(path: str, scope: str) -> int:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if all(_prefixed(k, scope) == k for k in state):
        return 0
    count = sum(_prefixed(k, scope) != k for k in state)
    torch.save({_prefixed(k, scope): v for k, v in state.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return count


# ------------------------------------------------------------------ tokenizer
def write_tokenizer_for_transformers4(tokenizer, directory: str) -> bool:
    """After ``tokenizer.save_pretrained(directory)``: put the sentencepiece
    ``tokenizer.model`` beside it and write ``tokenizer_class: LlamaTokenizer``, ``legacy``,
    ``add_bos_token`` and ``add_eos_token`` into ``tokenizer_config.json``, as the slow
    LlamaTokenizer reads them.
    Only for LLaMA-family sentencepiece tokenizers; returns whether it did anything."""
    from llava.mm_utils import slow_llama_rules, sentencepiece_model_file

    vocab_file = sentencepiece_model_file(tokenizer)
    rules = slow_llama_rules(tokenizer)
    if vocab_file is None or rules is None:
        return False
    target = os.path.join(directory, "tokenizer.model")
    if not os.path.isfile(target) or not os.path.samefile(vocab_file, target):
        shutil.copyfile(vocab_file, target)
    config_path = os.path.join(directory, "tokenizer_config.json")
    cfg: Dict[str, Any] = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            cfg = json.load(f)
    # 5.x may have written its generic "TokenizersBackend", which 4.x does not know.
    cfg.update(tokenizer_class="LlamaTokenizer", legacy=rules.legacy, add_bos_token=rules.bos is not None,
               add_eos_token=rules.eos is not None)
    _write_json(config_path, cfg)
    return True


# ------------------------------------------------------------------ peft
def _lora_defaults() -> Optional[Dict[str, Any]]:
    """The installed peft's LoraConfig defaults, as they appear in JSON (None without peft)."""
    try:
        import dataclasses

        from peft import LoraConfig
    except ImportError:
        return None
    out = {}
    for field in dataclasses.fields(LoraConfig):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        try:
            out[field.name] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            pass
    return out


def write_adapter_config_for_old_peft(directory: str, known: Iterable[str] = OLD_PEFT_LORA_KEYS) -> list:
    """Drop the ``adapter_config.json`` keys an old peft does not know where they hold the
    default value (of the installed peft; without peft: None / False / empty), and the
    ``peft_version`` note. Returns the dropped keys."""
    path = os.path.join(directory, "adapter_config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        return []
    known, defaults = set(known), _lora_defaults()

    def is_default(key: str, value: Any) -> bool:
        if defaults is not None:
            return key in defaults and value == defaults[key] and type(value) is type(defaults[key])
        return any(value == n and type(value) is type(n) for n in NEUTRAL_VALUES)

    dropped = [k for k, v in cfg.items() if k not in known and (k == "peft_version" or is_default(k, v))]
    if dropped:
        _write_json(path, {k: v for k, v in cfg.items() if k not in dropped})
    kept = sorted(k for k in cfg if k not in known and k not in dropped)
    if kept:
        logger.warning("adapter_config.json keeps %s (not at their default): peft versions before 0.9 will not "
                       "load this adapter", kept)
    return dropped


# ------------------------------------------------------------------ all at once
def make_checkpoint_compatible(directory: str, tokenizer=None) -> None:
    """Everything above for one saved LLaVA checkpoint folder (full, projector-only or LoRA);
    the tokenizer part only where ``tokenizer`` was saved into it. ``non_lora_trainables.bin``
    and ``mm_projector.bin`` already use the original's key names and are left as they are."""
    write_config_for_transformers4(directory)
    add_vision_model_prefix(directory, LLAVA_TOWER_PREFIX)
    saved_tokenizer = any(os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer_config.json", "tokenizer.json"))
    if tokenizer is not None and saved_tokenizer:
        write_tokenizer_for_transformers4(tokenizer, directory)
    write_adapter_config_for_old_peft(directory)


def make_tower_compatible(directory: str) -> None:
    """A saved ``CLIPVisionModel`` folder: 4.x config spellings and ``vision_model.`` keys."""
    write_config_for_transformers4(directory)
    add_vision_model_prefix(directory, "")


def _write_json(path: str, data: Any, indent: Optional[int] = 2) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)
