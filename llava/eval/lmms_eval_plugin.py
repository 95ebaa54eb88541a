"""lmms-eval model ``llava_holov``: LLaVA-1.5/1.6 through our loader, with HoloV ("Don't Just
Chase 'Highlighted Tokens' in MLLMs: Revisiting Visual Holistic Context Retention", NeurIPS
2025, arXiv 2510.02912) or a baseline pruner set from ``--model_args``.

    python -m lmms_eval eval --model llava_holov \\
        --model_args pretrained=liuhaotian/llava-v1.5-7b,holov_tokens=64,holov_mode=faithful \\
        --tasks pope --batch_size 8 --output_path results/lmms

lmms-eval 0.7.x finds outside models through the ``lmms_eval.models`` entry-point group; the
payload must be a ``ModelManifest`` (or a callable returning one), so setup.py points at
:func:`lmms_eval_manifest`, not at the class (a class is callable and would be instantiated
with no arguments). The constructor keywords are the ``--model_args``.

Differences from lmms-eval's stock ``llava`` wrapper (which also works against our package):
the pruning keywords; left-padded batch generation through our ``generate`` (which returns
only new tokens) with the ``until`` stop strings applied; images in the model's dtype rather
than always float16 (CPU has no fast float16); the greedy check of ``loglikelihood`` reads the
logits at the continuation's real positions (the stock one ignores the image-token
expansion); unknown keywords raise instead of failing an assert.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from accelerate import Accelerator

from holov_patches.cli_args import FLAG_NAMES, pruning_config_from_values
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates, get_conv_template, user_message
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

MODEL_ID = "llava_holov"
DTYPES = {"auto": "auto", "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
# Generation keys this wrapper interprets itself; anything else in a task's
# generation_kwargs goes to transformers' generate unchanged.
_OWN_GEN_KEYS = ("until", "max_new_tokens", "temperature", "top_p", "num_beams", "do_sample", "image_aspect_ratio")
DEFAULT_MAX_NEW_TOKENS = 1024  # as lmms-eval's llava wrapper


def lmms_eval_manifest():
    """Entry-point payload for lmms-eval's model registry (``lmms_eval.models`` group)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaHolov")


def _none_if_blank(value: Any) -> Any:
    """``--model_args model_base=None`` arrives as the string 'None'."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return int(value)


def _pick_device(device: Optional[str]) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; pass device=cpu")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ValueError(f"device={device!r} must be 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def _stop_at(text: str, until: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any non-empty stop string."""
    cut = min((text.find(s) for s in until if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


class LlavaHolov(lmms):
    """LLaVA with visual-token pruning for lmms-eval (see the module docstring)."""

    is_simple = True

    def __init__(self, pretrained: str, model_base: Optional[str] = None, conv_template: str = "vicuna_v1",
                 device: Optional[str] = None, device_map: Optional[str] = None, batch_size: Any = 1,
                 dtype: Optional[str] = None, attn_implementation: Optional[str] = None,
                 max_length: Optional[int] = None, model_name: Optional[str] = None,
                 use_cache: bool = True, max_batch_size: Optional[int] = None, **pruning_args: Any) -> None:
        """``pruning_args``: the pruning flags of ``holov_patches.cli_args.FLAGS`` by name
        (holov_tokens, prune_ratio, holov_mode, prune_method, ...)."""
        super().__init__()
        unknown = sorted(set(pruning_args) - set(FLAG_NAMES))
        if unknown:
            raise ValueError(f"unknown llava_holov model_args {unknown}; accepted: pretrained, model_base, "
                             "conv_template, device, device_map, batch_size, dtype, attn_implementation, max_length, "
                             f"model_name, use_cache, {', '.join(FLAG_NAMES)}")
        if max_batch_size is not None:
            raise ValueError(f"max_batch_size={max_batch_size!r} only applies to batch_size=auto, which llava_holov "
                             "does not support; give --batch_size N")
        if conv_template not in conv_templates:
            raise ValueError(f"conv_template={conv_template!r} is not one of {sorted(conv_templates)}")
        self.conv_template = conv_template
        self.batch_size_per_gpu = _positive_int("batch_size", batch_size)
        self.use_cache = bool(use_cache)
        dtype = _none_if_blank(dtype)
        if dtype is not None and str(dtype) not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")

        requested = pruning_config_from_values(pruning_args)

        # One model copy per process: `accelerate launch` splits the requests over ranks.
        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            device = f"cuda:{self.accelerator.local_process_index}"
        self._device = torch.device(_pick_device(_none_if_blank(device)))
        device_map = _none_if_blank(device_map) or {"": str(self._device)}
        self._rank = self.accelerator.local_process_index
        self._world_size = self.accelerator.num_processes

        load_kwargs: Dict[str, Any] = {"multimodal": True}
        if dtype is not None:
            load_kwargs["dtype"] = DTYPES[str(dtype)]
        if _none_if_blank(attn_implementation) is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        name = _none_if_blank(model_name) or get_model_name_from_path(str(pretrained))
        self._tokenizer, self._model, self._image_processor, context_len = load_pretrained_model(
            str(pretrained), _none_if_blank(model_base), name, device_map=device_map, device=str(self._device),
            pruning=requested, **load_kwargs)
        self._model.eval()
        self.pruning = self._model.get_pruning()  # the effective setting: flags > HOLOV_PRUNING > checkpoint
        self._max_length = _positive_int("max_length", max_length) if _none_if_blank(max_length) is not None else context_len
        self._config = self._model.config

    # ------------------------------------------------------------ properties lmms-eval reads
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def config(self):
        return self._config

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        return self._tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        pad = self._tokenizer.pad_token_id
        return pad if pad is not None else self._tokenizer.eos_token_id

    # ------------------------------------------------------------ shared helpers
    def _visuals(self, doc_to_visual, doc_id, task: str, split: str) -> List[Any]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return [v for v in (visuals or []) if v is not None]

    def _images(self, visuals: List[Any]):
        """PIL images -> pixel tensor(s) on the model's device and dtype, or None for text-only."""
        if not visuals:
            return None
        images = process_images(visuals, self._image_processor, self._config)
        if isinstance(images, list):
            return [x.to(device=self._device, dtype=self._model.dtype) for x in images]
        return images.to(device=self._device, dtype=self._model.dtype)

    def _conversation(self, context: str, num_images: int):
        """LLaVA's prompt: image tokens first (unless the task placed them), then the question."""
        conv = get_conv_template(self.conv_template)
        conv.append_message(conv.roles[0], user_message(context, num_images, keep_placed_tags=True))
        conv.append_message(conv.roles[1], None)
        return conv

    def _ids(self, prompt: str) -> torch.Tensor:
        return tokenizer_image_token(prompt, self._tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")

    def _left_pad(self, rows: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """[L_i] id rows -> input_ids [B, L] left-padded with pad_token_id, attention_mask [B, L]."""
        width = max(r.shape[0] for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - r.shape[0]:] = r
            mask[i, width - r.shape[0]:] = 1
        return ids.to(self._device), mask.to(self._device)

    # ------------------------------------------------------------ generate_until
    def _generation_kwargs(self, gen_kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
        """A task's generation_kwargs -> (transformers generate kwargs, stop strings)."""
        gen = dict(gen_kwargs)
        until = gen.pop("until", None)
        if until is None:
            until = [self._tokenizer.decode([self.eot_token_id])]
        elif isinstance(until, str):
            until = [until]
        elif not (isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until)):
            raise ValueError(f"generation_kwargs['until']={until!r} must be a string or a list of strings")
        aspect = gen.pop("image_aspect_ratio", None)
        if aspect is not None and getattr(self._config, "image_aspect_ratio", None) is None:
            self._config.image_aspect_ratio = aspect  # as lmms-eval's llava: only when the checkpoint has none
        temperature = float(gen.pop("temperature", 0) or 0)
        top_p = gen.pop("top_p", None)
        do_sample = bool(gen.pop("do_sample", False)) or temperature > 0
        out = {k: v for k, v in gen.items() if k not in _OWN_GEN_KEYS}
        out.update(max_new_tokens=int(gen.pop("max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS),
                   num_beams=int(gen.pop("num_beams", 1) or 1), do_sample=do_sample, use_cache=self.use_cache,
                   pad_token_id=self.pad_token_id)
        if do_sample:
            out["temperature"] = temperature
            if top_p is not None:
                out["top_p"] = float(top_p)
        return out, list(until)

    def generate_until(self, requests: List[Instance]) -> List[str]:
        """Greedy (or sampled) answers, batched by identical generation_kwargs, longest prompts
        first; a batch's images are loaded only when it runs."""
        args = [req.args for req in requests]
        # Sort key: the text prompt's length (images add one token each, the same for most tasks).
        lengths = [self._ids(self._conversation(context, 0).get_prompt()).shape[0] for context, *_ in args]
        groups: Dict[str, List[int]] = {}
        for i, (_, gen_kwargs, *_) in enumerate(args):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        batches = []
        for members in groups.values():
            members.sort(key=lambda i: -lengths[i])
            batches += [members[s:s + self.batch_size] for s in range(0, len(members), self.batch_size)]

        results: List[Optional[str]] = [None] * len(requests)
        for batch in tqdm(batches, disable=self.rank != 0, desc="llava_holov generate"):
            gen_kwargs, until = self._generation_kwargs(args[batch[0]][1])
            rows, visuals = [], []
            for i in batch:
                context, _, doc_to_visual, doc_id, task, split = args[i]
                own = self._visuals(doc_to_visual, doc_id, task, split)
                rows.append(self._ids(self._conversation(context, len(own)).get_prompt()))
                visuals += own
            input_ids, attention_mask = self._left_pad(rows)
            with torch.inference_mode():
                new_tokens = self._model.generate(
                    input_ids, attention_mask=attention_mask, images=self._images(visuals),
                    image_sizes=[v.size for v in visuals] or None, **gen_kwargs)
            texts = self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(batch, texts):
                results[i] = _stop_at(text, until)
                self.cache_hook.add_partial("generate_until", (args[i][0], args[i][1]), results[i])
        return results

    # ------------------------------------------------------------ loglikelihood
    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        """Per request ``(loss, is_greedy)``, as lmms-eval's llava wrapper: ``loss`` is the mean
        negative log-likelihood of the continuation tokens (the assistant answer and the
        template's end-of-turn token) given image + context, so lower is likelier;
        lmms-eval's multiple_choice scoring takes the argmin."""
        out: List[Tuple[float, bool]] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="llava_holov loglikelihood"):
            args = req.args
            if len(args) == 2:  # ("", continuation): the unconditional requests of acc_mutual_info
                (context, continuation), visuals = args, []
            else:
                context, target, doc_to_visual, doc_id, task, split = args
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
                continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            out.append(self._score(context, continuation, visuals))
        return out

    def _score(self, context: str, continuation: str, visuals: List[Any]) -> Tuple[float, bool]:
        conv = self._conversation(context, len(visuals))
        context_ids = self._ids(conv.get_prompt())
        conv.messages[-1][1] = continuation
        full_ids = self._ids(conv.get_prompt())
        # The context prompt's tokens are a prefix of the full prompt's in LLaVA's templates;
        # take the common prefix so a merge across the boundary cannot shift the split.
        width = min(context_ids.shape[0], full_ids.shape[0])
        differs = (context_ids[:width] != full_ids[:width]).nonzero()
        n_context = int(differs[0, 0]) if differs.numel() else width
        n_cont = full_ids.shape[0] - n_context
        if n_cont < 1:
            raise ValueError(f"continuation {continuation!r} adds no tokens to the prompt")
        input_ids = full_ids.unsqueeze(0).to(self._device)  # [1, L]
        labels = input_ids.clone()
        labels[:, :n_context] = -100
        with torch.inference_mode():
            output = self._model(input_ids=input_ids, labels=labels, images=self._images(visuals),
                                 image_sizes=[v.size for v in visuals] or None, use_cache=False)
        # Image tokens expand inside the model, but the continuation stays the sequence's tail:
        # the logits at positions [-n_cont-1, -1) predict its n_cont tokens.
        greedy = output.logits[0, -n_cont - 1:-1].argmax(dim=-1)  # [n_cont]
        return float(output.loss.item()), bool((greedy == input_ids[0, -n_cont:]).all())

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError("llava_holov does not implement multi-round generation (neither does lmms-eval's llava)")
