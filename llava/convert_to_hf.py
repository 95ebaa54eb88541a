"""Convert an original LLaVA-1.5 checkpoint to the llava-hf layout (``LlavaForConditionalGeneration``).

    python -m llava.convert_to_hf SRC DST [--overwrite] [--dtype auto] [--max-shard-size 5GB]

SRC is a local folder in the liuhaotian layout: ``config.json`` with ``mm_vision_tower``,
``mm_projector_type: mlp2x_gelu``, ``mm_vision_select_layer``..., the LLaMA/Vicuna weights
(``model.layers.*``, ``lm_head``), the projector (``model.mm_projector.{0,2}.*``), the
tower where it was saved (``model.vision_tower.vision_tower.vision_model.*``; these win
over the weights read from ``mm_vision_tower``, as in our loader) and the tokenizer. The CLIP
tower's config, its missing weights and its preprocessing settings come from
``mm_vision_tower`` (a hub id, or a folder; a relative one beside SRC wins).

DST gets what the llava-hf hub checkpoints hold:

- weights (sharded safetensors) under the HUB key layout: ``language_model.model.*``,
  ``language_model.lm_head.*``, ``multi_modal_projector.linear_{1,2}.*``,
  ``vision_tower.vision_model.*``. transformers 5.x ``save_pretrained`` writes the tower as
  ``vision_tower.embeddings.*`` (no ``vision_model.``), which vLLM's CLIP loader does not
  accept; 5.x itself loads the hub layout through its own key renaming
  (``transformers.conversion_mapping``, model type ``llava``), which this converter also
  uses to check every written key and shape against the model before anything is written.
- ``config.json`` (``LlavaConfig``: ``image_token_index``, ``vision_feature_layer`` =
  ``mm_vision_select_layer``, ``vision_feature_select_strategy`` ``default`` for
  ``mm_vision_select_feature: patch``, ``full`` for ``cls_patch``; the 4.x spellings
  ``torch_dtype`` / ``rope_theta`` beside the 5.x ones), ``generation_config.json``.
- The tokenizer with two added tokens, as transformers' LLaVA conversion script does
  (``convert_llava_weights_to_hf.py``): ``<image>`` (special, not normalised) at id
  V = the source tokenizer's length (32000 for Vicuna) and ``<pad>`` at V + 1 as the pad
  token (kept when the source already has a pad token of its own, not unk/bos/eos).
  ``image_token_index`` is the ``<image>`` id. Left padding (batched generation).
- The embeddings and ``lm_head`` grow to hold the new ids, padded to a multiple of 64 rows
  (``--pad-to-multiple-of``), as the official script's ``resize_token_embeddings(V + 2, 64)``
  (32000 -> 32064). The official script fills the new rows of BOTH matrices with samples of
  N(mu, 1e-5 Sigma) of the old embedding rows (random, so two runs differ). We fill each
  matrix's new rows with the MEAN of its own old rows: deterministic, and a new token's
  logit is then the mean of the old logits, never above their maximum, so greedy decoding
  (argmax, ties to the lower id) never picks one; the old vocabulary's logits are unchanged.
  The ``<image>`` and ``<pad>`` rows are never looked up (image features replace the one,
  the mask hides the other).
- The processor (``AutoProcessor.from_pretrained(DST)``): ``LlavaProcessor`` with a
  ``LlavaImageProcessor`` carrying the tower's CLIP settings (size, crop, mean/std,
  resample) and, for ``image_aspect_ratio: pad`` (LLaVA-1.5), ``do_pad``: the image is
  padded to a square with the mean colour first, which is LLaVA's ``expand2square`` (the
  llava-hf hub processors are plain ``CLIPImageProcessor`` and centre-crop instead). It
  is written with the PIL backend (no torchvision needed); the saved type name
  ``LlavaImageProcessor`` lets transformers pick its backend on load.
- A chat template rendering LLaVA's ``vicuna_v1`` conversation
  (``{system} USER: <image> \\n{question} ASSISTANT:``, answers end with ``</s>``; a
  ``system`` message replaces the default system prompt; all images of a turn go first, as
  LLaVA puts ``<image>`` first). The space after ``<image>`` is deliberate: the original
  tokenizes the text after each image on its own, and SentencePiece then prepends its
  dummy-prefix space; with the space the processor's ids equal the original's token for
  token (without it every image would be followed by one token fewer than in training).
  A message whose content is a plain string is used as it is.

Not converted (refused with the reason): LLaVA-NeXT (``anyres`` / ``spatial_unpad``),
``mm_use_im_start_end``, projectors other than ``mlp2x_gelu``, non-LLaMA backbones,
LoRA or projector-only checkpoints (merge them first: load with
``llava.model.builder.load_pretrained_model`` and ``save_pretrained``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)

SUPPORTED_PROJECTORS = ("mlp2x_gelu",)
SUPPORTED_ASPECT_RATIOS = (None, "square", "pad")
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}  # ours -> llava-hf's vision_feature_select_strategy
DTYPES = ("auto", "float32", "float16", "bfloat16")
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
SRC_TOWER = "model.vision_tower.vision_tower."
HUB_TOWER = "vision_tower.vision_model."
HUB_EMBED = "language_model.model.embed_tokens.weight"
HUB_LM_HEAD = "language_model.lm_head.weight"
_PROJECTOR_KEY = re.compile(r"model\.mm_projector\.([02])\.(weight|bias)")
_NOT_WEIGHTS = ("non_lora_trainables.bin", "mm_projector.bin", "training_args.bin")
_SHARD_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)\s*", re.IGNORECASE)  # what huggingface_hub parses


# ---------------------------------------------------------------- checks (cheap, before any weight is read)
def check_paths(src: str, dst: str, overwrite: bool) -> None:
    """SRC must be a checkpoint folder; DST must not be a file, nor a non-empty folder
    unless ``overwrite``; neither may contain the other's files in a way overwriting would destroy."""
    if not os.path.exists(src):
        raise ValueError(f"SRC {src} does not exist: give the folder of an original LLaVA-1.5 checkpoint")
    if not os.path.isdir(src):
        raise ValueError(f"SRC {src} is a file: give the checkpoint folder (with config.json and the weights)")
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ValueError(f"config.json not found in SRC {src}: not a model checkpoint folder")
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if src_real == dst_real or src_real.startswith(dst_real + os.sep):
        raise ValueError(f"DST {dst} is SRC or a folder above it: writing there would destroy the source")
    if os.path.isfile(dst):
        raise ValueError(f"DST {dst} is a file: give a folder to write the converted checkpoint to")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise ValueError(f"DST {dst} exists and is not empty: pass --overwrite to replace it")


def read_source_config(src: str) -> Dict[str, Any]:
    """SRC's config.json, checked to be a convertible LLaVA-1.5 (LLaMA) checkpoint."""
    path = os.path.join(src, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    archs = [str(a) for a in cfg.get("architectures") or []]
    if "text_config" in cfg or "LlavaForConditionalGeneration" in archs:
        raise ValueError(f"{src} is already in the llava-hf layout (architectures {archs}); nothing to convert")
    if not cfg.get("mm_vision_tower"):
        raise ValueError(f"{src} is not a LLaVA checkpoint: its config.json has no mm_vision_tower "
                         f"(model_type={cfg.get('model_type')!r}, architectures={archs})")
    names = [str(cfg.get("model_type", ""))] + archs
    if any(n.lower() not in ("llava", "llava_llama", "llavallamaforcausallm") for n in names if n):
        raise ValueError(f"{src}: model_type/architectures {names} is not a LLaMA-based LLaVA (accepted: model_type "
                         "'llava' or 'llava_llama', architectures ['LlavaLlamaForCausalLM'])")
    projector = cfg.get("mm_projector_type", "linear")
    if projector not in SUPPORTED_PROJECTORS:
        raise ValueError(f"mm_projector_type={projector!r} in {src}: llava-hf's projector is "
                         f"linear-GELU-linear; accepted: {SUPPORTED_PROJECTORS}")
    aspect = cfg.get("image_aspect_ratio")
    merge = cfg.get("mm_patch_merge_type", "flat")
    if aspect not in SUPPORTED_ASPECT_RATIOS or merge != "flat":
        raise ValueError(f"image_aspect_ratio={aspect!r}, mm_patch_merge_type={merge!r} in {src}: only LLaVA-1.5 "
                         f"(image_aspect_ratio one of {SUPPORTED_ASPECT_RATIOS}, mm_patch_merge_type 'flat') is "
                         "converted; LLaVA-NeXT (anyres) is not")
    if cfg.get("mm_use_im_start_end"):
        raise ValueError(f"mm_use_im_start_end=True in {src}: llava-hf has no <im_start>/<im_end> tokens; "
                         "accepted: false")
    feature = cfg.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise ValueError(f"mm_vision_select_feature={feature!r} in {src} is not one of {tuple(SELECT_FEATURES)}")
    layer = cfg.get("mm_vision_select_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"mm_vision_select_layer={layer!r} in {src} must be one integer layer index")
    return cfg


def check_options(dtype: str, pad_to_multiple_of: Any, max_shard_size: Any = "5GB") -> None:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {DTYPES}")
    if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or not 1 <= pad_to_multiple_of <= 4096:
        raise ValueError(f"--pad-to-multiple-of {pad_to_multiple_of!r} must be an integer in [1, 4096]")
    if not isinstance(max_shard_size, str) or not _SHARD_SIZE.fullmatch(max_shard_size) or \
            float(_SHARD_SIZE.fullmatch(max_shard_size).group(1)) <= 0:
        raise ValueError(f"--max-shard-size {max_shard_size!r} must be a positive size with a unit KB, MB, GB or TB "
                         "(e.g. 500MB, 5GB)")


def tower_source(cfg: Dict[str, Any], src: str) -> str:
    """``mm_vision_tower`` resolved as our loader resolves it (a relative folder beside SRC wins)."""
    from llava.model.multimodal_encoder.builder import looks_like_local_path, resolve_vision_tower_path

    name = resolve_vision_tower_path(cfg["mm_vision_tower"], src)
    if looks_like_local_path(name) and not os.path.isdir(name):
        raise ValueError(f"mm_vision_tower={cfg['mm_vision_tower']!r} is not a folder here (nor beside {src}) and not "
                         "a hub id of the form owner/name")
    return name


# ---------------------------------------------------------------- weights
def weight_files(src: str) -> List[str]:
    """The weight files of SRC: the shard index's files, else every safetensors file, else
    every ``pytorch_model*.bin`` (LLaVA's training side files excluded)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(src, index)
        if os.path.isfile(path):
            with open(path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{path} has no 'weight_map': a sharded checkpoint's index must map each weight to its file")
            return sorted(set(weight_map.values()))
    names = sorted(os.listdir(src))
    files = [n for n in names if n.endswith(".safetensors")]
    if not files:
        files = [n for n in names if n.endswith(".bin") and n not in _NOT_WEIGHTS]
    if not files:
        side = [n for n in _NOT_WEIGHTS[:2] if n in names] + (["adapter_config.json"] if "adapter_config.json" in names else [])
        hint = (f" (it has {side}: a LoRA or projector-only checkpoint; merge it on its base first)" if side else "")
        raise ValueError(f"no weight files (*.safetensors, pytorch_model*.bin) in SRC {src}{hint}")
    return files


def read_weights(src: str) -> Dict[str, Any]:
    import torch
    from safetensors import safe_open

    state: Dict[str, Any] = {}
    for name in weight_files(src):
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            raise ValueError(f"weight file {name} named by SRC's shard index is missing from {src}")
        if name.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                state.update({key: f.get_tensor(key) for key in f.keys()})
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return state


def hub_key(key: str) -> Optional[str]:
    """An original LLaVA-1.5 key -> its llava-hf hub key (None: not carried over)."""
    if key.endswith(("rotary_emb.inv_freq", "embeddings.position_ids")) or key == "model.image_newline":
        return None  # buffers older transformers saved (rebuilt at load); image_newline is unused with 'flat' merging
    if key.startswith(SRC_TOWER):
        rest = key[len(SRC_TOWER):]
        return HUB_TOWER + (rest[len("vision_model."):] if rest.startswith("vision_model.") else rest)
    if key.startswith("model.mm_projector."):
        match = _PROJECTOR_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected projector weight {key!r}: mlp2x_gelu has model.mm_projector.{{0,2}}.{{weight,bias}}")
        return f"multi_modal_projector.linear_{1 if match.group(1) == '0' else 2}.{match.group(2)}"
    if key.startswith("model.") or key.startswith("lm_head."):
        return "language_model." + key  # model.layers.* -> language_model.model.layers.*
    raise ValueError(f"unexpected weight {key!r} in the source checkpoint (not LLaMA, projector or CLIP tower)")


def convert_weights(state: Dict[str, Any], cfg: Dict[str, Any], src: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in state.items():
        new = hub_key(key)
        if new is not None:
            out[new] = value
    if not any(k.startswith("multi_modal_projector.") for k in out):
        raise ValueError(f"SRC {src} has no projector weights (model.mm_projector.*): a language model alone, or a "
                         "LoRA / projector-only checkpoint (merge it on its base first)")
    if HUB_EMBED not in out:
        raise ValueError(f"SRC {src} has no model.embed_tokens.weight")
    if HUB_LM_HEAD not in out:
        if not cfg.get("tie_word_embeddings", False):
            raise ValueError(f"SRC {src} has no lm_head.weight and tie_word_embeddings is false")
        out[HUB_LM_HEAD] = out[HUB_EMBED].clone()
    return out


def tower_weights(tower: str, have: Dict[str, Any], wanted: List[str]) -> Dict[str, Any]:
    """The tower keys (hub layout) SRC lacks, read from ``mm_vision_tower``; none are read
    when SRC carries them all."""
    missing = [k for k in wanted if k not in have]
    if not missing:
        return {}
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(tower)
    state = {}
    for key, value in model.state_dict().items():
        key = key[len("vision_model."):] if key.startswith("vision_model.") else key
        state[HUB_TOWER + key] = value
    return {k: state[k] for k in missing if k in state}


def new_rows(weight, rows: int):
    """``weight`` [V, D] grown to [rows, D]; the new rows are the mean of the old ones."""
    import torch

    if rows <= weight.shape[0]:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)], dim=0).contiguous()


# ---------------------------------------------------------------- configs
def text_config(cfg: Dict[str, Any], vocab_size: int, pad_token_id: int):
    """The LlamaConfig of SRC's language model: the LLaMA keys of its config.json (the mm_* and
    training keys dropped), with the grown vocabulary and the new pad id."""
    from transformers import LlamaConfig

    known = set(LlamaConfig().to_dict()) | {"rope_theta", "rope_scaling"}
    skip = {"model_type", "architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path", "vocab_size",
            "pad_token_id"}
    kept = {k: v for k, v in cfg.items() if k in known and k not in skip}
    return LlamaConfig(**kept, vocab_size=vocab_size, pad_token_id=pad_token_id)


def chat_template(conv_mode: str = "vicuna_v1") -> str:
    """A Jinja chat template that renders ``conv_templates[conv_mode]`` (a two-separator
    USER/ASSISTANT conversation) the way ``Conversation.get_prompt`` does, with a space after
    every ``<image>`` (see the module docstring)."""
    from llava.conversation import SeparatorStyle, conv_templates

    if conv_mode not in conv_templates:
        raise ValueError(f"conv_mode={conv_mode!r} is not one of {sorted(conv_templates)}")
    conv = conv_templates[conv_mode]
    if conv.sep_style != SeparatorStyle.TWO or conv.messages:
        raise ValueError(f"conv_mode={conv_mode!r}: only two-separator conversations without example turns are "
                         "written as a chat template (LLaVA-1.5's vicuna_v1)")
    q = json.dumps
    user, assistant = conv.roles
    text_parts = "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n')"
    return (
        "{%- set ns = namespace(system=" + q(conv.system) + ") -%}"
        "{%- set turns = messages -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
        "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('\\n') -%}{%- endif -%}"
        "{%- set turns = messages[1:] -%}"
        "{%- endif -%}"
        "{{- ns.system + " + q(conv.sep) + " -}}"
        "{%- for message in turns -%}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) or message['role'] not in ['user', 'assistant'] -%}"
        "{{- raise_exception('LLaVA conversations alternate user and assistant turns, starting with the user "
        "(after an optional system message)') -}}"
        "{%- endif -%}"
        "{{- (" + q(user) + " if message['role'] == 'user' else " + q(assistant) + ") + ': ' -}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}"
        "{%- for part in message['content'] if part['type'] == 'image' -%}{{- " + q(IMAGE_TOKEN + " \n") + " -}}{%- endfor -%}"
        "{{- " + text_parts + " -}}"
        "{%- endif -%}"
        "{{- " + q(conv.sep) + " if loop.index0 % 2 == 0 else " + q(conv.sep2) + " -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + q(assistant + ":") + " -}}{%- endif -%}"
    )


def load_tokenizer(src: str):
    """SRC's tokenizer with ``<image>`` and (when SRC has no pad token of its own) ``<pad>`` added.
    Returns (tokenizer, source length, image id, pad id)."""
    from transformers import AddedToken, AutoTokenizer

    if not any(os.path.isfile(os.path.join(src, f)) for f in ("tokenizer.model", "tokenizer.json")):
        raise ValueError(f"SRC {src} has no tokenizer (tokenizer.model or tokenizer.json)")
    tokenizer = AutoTokenizer.from_pretrained(src)
    base = len(tokenizer)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    own_pad = tokenizer.pad_token is not None and tokenizer.pad_token not in (
        tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token)
    if not own_pad:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"
    return tokenizer, base, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.pad_token_id


def image_processor(tower: str, aspect: Optional[str]):
    """A LlavaImageProcessor with the tower's CLIP settings, padding to a square for 'pad'."""
    from transformers import LlavaImageProcessorPil

    from llava.model.multimodal_encoder.clip_encoder import image_processor_class

    clip = image_processor_class().from_pretrained(tower)
    settings = {name: getattr(clip, name) for name in ("size", "crop_size", "image_mean", "image_std", "resample",
                                                      "do_resize", "do_center_crop", "do_rescale", "rescale_factor",
                                                      "do_normalize", "do_convert_rgb") if getattr(clip, name, None) is not None}
    settings = {k: (dict(v) if k in ("size", "crop_size") else v) for k, v in settings.items()}
    settings["size"] = {k: v for k, v in settings["size"].items() if v is not None}
    settings["crop_size"] = {k: v for k, v in settings["crop_size"].items() if v is not None}
    return LlavaImageProcessorPil(**settings, do_pad=aspect == "pad")


# ---------------------------------------------------------------- verification with transformers' own key mapping
def check_against_model(config, state: Dict[str, Any]) -> None:
    """Every hub key, renamed by transformers' own conversion mapping for the model, must name
    a parameter of ``LlavaForConditionalGeneration(config)`` of the same shape, and every
    parameter must be covered. Runs on the meta device (no memory for the weights)."""
    import torch
    from transformers import LlavaForConditionalGeneration
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    seen = set()
    for key, value in state.items():
        target, _ = rename_source_key(key, renamings, converters, base_model_prefix=model.base_model_prefix,
                                      meta_state_dict=expected)
        if target not in expected:
            raise ValueError(f"converted weight {key!r} (loaded as {target!r}) is not a parameter of "
                               "LlavaForConditionalGeneration")
        if tuple(value.shape) != expected[target]:
            raise ValueError(f"converted weight {key!r} has shape {tuple(value.shape)}, the model expects "
                               f"{expected[target]} for {target!r}")
        seen.add(target)
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"the converted checkpoint lacks {len(missing)} weights of the model, e.g. {missing[:5]}")


# ---------------------------------------------------------------- the conversion
def convert(src: str, dst: str, overwrite: bool = False, dtype: str = "auto", pad_to_multiple_of: int = 64,
            max_shard_size: str = "5GB", conv_mode: str = "vicuna_v1") -> str:
    """Convert SRC to DST (see the module docstring); returns DST. Every check on the input
    runs before a weight is read; DST is written into a temporary folder beside it and put in
    place only when complete."""
    import torch
    from huggingface_hub import save_torch_state_dict
    from transformers import CLIPVisionConfig, GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from llava.model.checkpoint_compat import config_for_transformers4, write_tokenizer_for_transformers4

    check_paths(src, dst, overwrite)
    check_options(dtype, pad_to_multiple_of, max_shard_size)
    cfg = read_source_config(src)
    template = chat_template(conv_mode)
    tower = tower_source(cfg, src)
    tokenizer, base_len, image_id, pad_id = load_tokenizer(src)
    vision = CLIPVisionConfig.from_pretrained(tower)
    layers = vision.num_hidden_layers
    layer = cfg.get("mm_vision_select_layer", -2)
    if not -layers - 1 <= layer <= layers:
        raise ValueError(f"mm_vision_select_layer={layer} is outside [-{layers + 1}, {layers}] for the "
                         f"{layers}-layer tower {tower}")
    processor_images = image_processor(tower, cfg.get("image_aspect_ratio"))

    state = convert_weights(read_weights(src), cfg, src)
    embed = state[HUB_EMBED]
    rows = max(int(embed.shape[0]), len(tokenizer))
    rows = math.ceil(rows / pad_to_multiple_of) * pad_to_multiple_of
    if int(embed.shape[0]) < base_len:
        logger.warning("the source embeddings have %d rows for a tokenizer of %d tokens", embed.shape[0], base_len)
    state[HUB_EMBED] = new_rows(embed, rows)
    state[HUB_LM_HEAD] = new_rows(state[HUB_LM_HEAD], rows)

    with torch.device("meta"):
        tower_keys = [HUB_TOWER + k for k in _clip_keys(vision)]
    state.update(tower_weights(tower, state, tower_keys))
    target_dtype = embed.dtype if dtype == "auto" else getattr(torch, dtype)
    state = {k: (v.to(target_dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}

    select = SELECT_FEATURES[cfg.get("mm_vision_select_feature", "patch")]
    patches = (vision.image_size // vision.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text_config(cfg, rows, pad_id), image_token_id=image_id,
        projector_hidden_act="gelu", vision_feature_select_strategy=select, vision_feature_layer=layer,
        image_seq_length=patches + (select == "full"), multimodal_projector_bias=True, tie_word_embeddings=False)
    config.architectures = [LlavaForConditionalGeneration.__name__]
    config.dtype = target_dtype
    check_against_model(config, state)

    processor = LlavaProcessor(image_processor=processor_images, tokenizer=tokenizer, patch_size=vision.patch_size,
                               vision_feature_select_strategy=select, num_additional_image_tokens=1,
                               chat_template=template)
    tokenizer.chat_template = template
    generation = _generation_config(src, cfg, GenerationConfig)
    generation.pad_token_id = pad_id

    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(dst))}.converting-")
    try:
        save_torch_state_dict(state, tmp, max_shard_size=max_shard_size, metadata={"format": "pt"})
        config.save_pretrained(tmp)
        _rewrite_json(os.path.join(tmp, "config.json"), config_for_transformers4)
        generation.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        processor_images.save_pretrained(tmp)  # preprocessor_config.json: 4.x reads the image processor from there
        write_tokenizer_for_transformers4(tokenizer, tmp)
        _rewrite_json(os.path.join(tmp, "tokenizer_config.json"), lambda c: _tokenizer_config(c, tokenizer, template))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _clip_keys(vision) -> List[str]:
    """The parameter names of a transformers CLIP vision tower (without ``vision_model.``)."""
    from transformers import CLIPVisionModel

    keys = CLIPVisionModel(vision).state_dict().keys()
    return [k[len("vision_model."):] if k.startswith("vision_model.") else k for k in keys]


def _generation_config(src: str, cfg: Dict[str, Any], cls):
    if os.path.isfile(os.path.join(src, "generation_config.json")):
        return cls.from_pretrained(src)
    return cls(bos_token_id=cfg.get("bos_token_id", 1), eos_token_id=cfg.get("eos_token_id", 2))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tokenizer_config(cfg: Dict[str, Any], tokenizer, template: str) -> Dict[str, Any]:
    """tokenizer_config.json as 4.x readers want it too: ``added_tokens_decoder`` (5.x keeps
    it in tokenizer.json only; 4.x's slow LlamaTokenizer reads it from here) and the chat
    template (older readers look here, not in chat_template.jinja); 5.x's notes about where
    the files were loaded from are dropped."""
    out = {k: v for k, v in cfg.items() if k not in ("is_local", "local_files_only")}
    out["chat_template"] = template
    out["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tokenizer.added_tokens_decoder.items())}
    return out


def _rewrite_json(path: str, change) -> None:
    with open(path) as f:
        data = json.load(f)
    with open(path, "w") as f:
        json.dump(change(data), f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- command line
def build_parser():
    from llava.utils import LlavaArgumentParser

    p = LlavaArgumentParser(prog="python -m llava.convert_to_hf",
                            description="Convert an original LLaVA-1.5 checkpoint (liuhaotian layout) to the llava-hf "
                                        "layout (LlavaForConditionalGeneration, loadable by transformers and vLLM).")
    p.add_argument("src", help="folder of the original checkpoint (config.json with mm_vision_tower, weights, tokenizer)")
    p.add_argument("dst", help="folder to write the converted checkpoint to (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace DST when it exists and is not empty")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weight dtype (auto: the source's)")
    p.add_argument("--pad-to-multiple-of", type=int, default=64,
                   help="round the grown vocabulary up to a multiple of this (64, as llava-hf)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard")
    p.add_argument("--conv-mode", default="vicuna_v1", help="conversation written as the chat template (LLaVA-1.5: vicuna_v1)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst, overwrite=args.overwrite, dtype=args.dtype,
                      pad_to_multiple_of=args.pad_to_multiple_of, max_shard_size=args.max_shard_size,
                      conv_mode=args.conv_mode)
    except ValueError as err:
        parser.error(str(err))
    print(f"converted {args.src} -> {out} (llava-hf layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
