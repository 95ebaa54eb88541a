"""What every benchmark entry point shares: flags, chunking, model loading, the prompt,
one generation call and the answer record.

The flags and the JSONL answer format are LLaVA's (``model_vqa_loader.py`` and friends), so
the original scripts and converters keep working; on top of them come the pruning flags of
:mod:`holov_patches.cli_args`, ``--device`` and a resumable answers file
(:mod:`llava.eval.answers_io`). The effective pruning setting goes into every answer's
``metadata`` so a results file says how it was made.

Importing this module imports no torch (the model code loads in :meth:`EvalModel.load`), so
an entry point's ``--help`` and a mistyped flag answer at once.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, TypeVar

from holov_patches.cli_args import add_pruning_args, pruning_config_from_args
from llava.constants import IMAGE_TOKEN_INDEX, MC_PROMPT, MC_PROMPT_CN  # noqa: F401  (the mc scripts import them from here)
from llava.conversation import build_prompt, get_conv_template
from llava.eval.answers_io import model_fingerprint
from llava.eval.scoring.scoring_io import parse_jsonl
from llava.utils import LlavaArgumentParser, add_device_arg, pick_device, quiet_known_warnings

if TYPE_CHECKING:  # annotations only
    import torch

T = TypeVar("T")
# Fixed namespace: the answer id is a function of the answer, so a resumed run writes the
# very file an uninterrupted run would (LLaVA draws a random shortuuid instead).
_ANSWER_NS = uuid.UUID("6b1e3c2a-5d4f-4f8e-9a51-0c7d2b9e8f10")


# ---------------------------------------------------------------- chunking
def split_list(lst: Sequence[T], n: int) -> List[Sequence[T]]:
    """LLaVA's split: consecutive chunks of ceil(len/n) items (fewer than n chunks when
    the list is short)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_chunks={n!r} must be an integer >= 1")
    chunk_size = math.ceil(len(lst) / n)
    if chunk_size == 0:
        return []
    return [lst[i:i + chunk_size] for i in range(0, len(lst), chunk_size)]


def get_chunk(lst: Sequence[T], n: int, k: int) -> Sequence[T]:
    """Chunk ``k`` of ``n``; empty when the list is too short to reach it (more GPUs than
    questions), so every chunk's job still writes its (empty) answers file."""
    if not isinstance(k, int) or not 0 <= k < n:
        raise ValueError(f"chunk_idx={k!r} must be in [0, num_chunks={n})")
    chunks = split_list(lst, n)
    return chunks[k] if k < len(chunks) else lst[:0]


# ---------------------------------------------------------------- flags
def build_parser(description: str, *, max_new_tokens: int, image_folder_required: bool = True,
                 single_pred_prompt: bool = False, probe_device: bool = True) -> argparse.ArgumentParser:
    """LLaVA's eval flags plus pruning and ``--device``; entry points add their own extras.
    ``probe_device=False`` (what the entry points' ``main`` uses) leaves ``--device`` None
    until after parsing instead of importing torch to ask for a GPU."""
    p = LlavaArgumentParser(description=description)
    p.add_argument("--model-path", type=str, required=True)
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-folder", type=str, required=image_folder_required, default="")
    p.add_argument("--question-file", type=str, required=True)
    p.add_argument("--answers-file", type=str, required=True,
                   help="JSONL output; answers already in it are kept and their questions skipped")
    p.add_argument("--conv-mode", type=str, default="llava_v1")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    if single_pred_prompt:
        p.add_argument("--single-pred-prompt", action="store_true",
                       help=f"append {MC_PROMPT!r} to every question")
    add_device_arg(p, probe=probe_device)
    # Stop after this many new answers: lets tests stand in for a killed run.
    p.add_argument("--max-questions", type=int, default=None, help=argparse.SUPPRESS)
    add_pruning_args(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Reject values that would otherwise fail late inside generate, the chunking or the
    answers file (all before the model loads)."""
    if args.num_chunks < 1:
        raise ValueError(f"--num-chunks {args.num_chunks} must be >= 1")
    if not 0 <= args.chunk_idx < args.num_chunks:
        raise ValueError(f"--chunk-idx {args.chunk_idx} must be in [0, {args.num_chunks})")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature} must be a finite number >= 0 (0 = greedy)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p {args.top_p} must be in (0, 1]")
    if args.num_beams < 1:
        raise ValueError(f"--num_beams {args.num_beams} must be >= 1")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens {args.max_new_tokens} must be >= 1")
    if args.max_questions is not None and args.max_questions < 0:
        raise ValueError(f"--max-questions {args.max_questions} must be >= 0")
    from llava.eval.answers_io import check_answers_path

    pruning_config_from_args(args)  # the pruning flags as a whole (a method name needs the registry)
    check_answers_path(args.answers_file)
    question_file = os.path.expanduser(args.question_file)
    if not os.path.isfile(question_file):
        what = "a directory" if os.path.isdir(question_file) else "not found"
        raise ValueError(f"--question-file {args.question_file} is {what}; give the benchmark's question file")
    folder = getattr(args, "image_folder", "")
    if folder and not os.path.isdir(os.path.expanduser(folder)):
        raise ValueError(f"--image-folder {folder} is not a directory")


# ---------------------------------------------------------------- model
@dataclass
class EvalModel:
    """A loaded checkpoint plus what every question needs: prompt template and generation settings."""

    tokenizer: Any
    model: Any
    image_processor: Any
    model_name: str
    conv_mode: str
    generation: Dict[str, Any]

    @classmethod
    def load(cls, args: argparse.Namespace) -> "EvalModel":
        quiet_known_warnings()
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model

        model_path = os.path.expanduser(args.model_path)
        model_base = os.path.expanduser(args.model_base) if args.model_base else None
        model_name = get_model_name_from_path(model_path)
        get_conv_template(args.conv_mode)  # unknown names fail before the model loads
        tokenizer, model, image_processor, _ = load_pretrained_model(
            model_path, model_base, model_name, device=pick_device(args.device),
            pruning=pruning_config_from_args(args))
        generation = {"temperature": args.temperature, "top_p": args.top_p, "num_beams": args.num_beams,
                      "max_new_tokens": args.max_new_tokens, "conv_mode": args.conv_mode}
        em = cls(tokenizer, model, image_processor, model_name, args.conv_mode, generation)
        # after loading: a hub id is in the local cache by now
        em.fingerprint = model_fingerprint(model_path, model_base)
        return em

    @property
    def pruning(self) -> Optional[Dict[str, Any]]:
        """The setting in effect (flags > HOLOV_PRUNING > the checkpoint's saved one), or None."""
        cfg = self.model.get_pruning()
        return None if cfg is None else cfg.to_dict()

    @property
    def settings(self) -> Dict[str, Any]:
        """What must match between an answers file and a run that resumes it."""
        fingerprint = getattr(self, "fingerprint", None)
        if fingerprint is None:
            raise ValueError("EvalModel.fingerprint is not set (use EvalModel.load, or set it with "
                             "answers_io.model_fingerprint): answers could not be tied to the weights")
        # model_id is only the folder's name; the fingerprint tells two trainings in one folder apart
        return {"model_id": self.model_name, "metadata.pruning": self.pruning,
                "metadata.generation": self.generation, "metadata.model_fingerprint": fingerprint}

    def prompt(self, question: str, with_image: bool) -> str:
        """The conversation prompt for one question: ``<image>\\n`` + question when there is an image."""
        return build_prompt(question, self.conv_mode, int(with_image),
                            mm_use_im_start_end=getattr(self.model.config, "mm_use_im_start_end", False))

    def input_ids(self, prompt: str) -> torch.Tensor:
        from llava.mm_utils import tokenizer_image_token

        return tokenizer_image_token(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")

    def image_tensor(self, images: Sequence[Any]):
        """Preprocessed pixels of ``images`` (a tensor, or a list for anyres crops of different counts)."""
        from llava.mm_utils import process_images

        return process_images(images, self.image_processor, self.model.config)

    def generate(self, input_ids: torch.Tensor, image_tensor=None, image_sizes=None,
                 pruning_text: Optional[str] = None) -> str:
        """Answer text for one prompt ([L] or [1, L] ids); LLaVA's decoding settings.
        ``pruning_text``: the instruction a text-conditioned pruner (CDPruner) scores the visual
        tokens against (see ``llava.eval.pruning_text``); the other methods ignore it."""
        import torch

        model = self.model
        if input_ids.dim() == 1:
            input_ids = input_ids[None]  # [L] -> [1, L]
        kwargs: Dict[str, Any] = dict(do_sample=self.generation["temperature"] > 0,
                                      num_beams=self.generation["num_beams"],
                                      max_new_tokens=self.generation["max_new_tokens"], use_cache=True,
                                      pad_token_id=self.tokenizer.pad_token_id)
        if self.generation["temperature"] > 0:
            kwargs.update(temperature=self.generation["temperature"], top_p=self.generation["top_p"])
        if image_tensor is not None:
            image_tensor = image_tensor.to(model.device, dtype=model.dtype) if isinstance(image_tensor, torch.Tensor) \
                else [t.to(model.device, dtype=model.dtype) for t in image_tensor]
            kwargs.update(images=image_tensor, image_sizes=image_sizes)
            if pruning_text is not None:
                kwargs["pruning_text"] = pruning_text
        with torch.inference_mode():
            output_ids = model.generate(input_ids.to(model.device), **kwargs)
        return self.tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()

    def record(self, question_id: Any, prompt: str, text: str, **extra: Any) -> Dict[str, Any]:
        """LLaVA's answer record, with the pruning and generation settings in ``metadata``."""
        answer_id = uuid.uuid5(_ANSWER_NS, json.dumps(
            [self.model_name, question_id, extra.get("round_id"), prompt, text], ensure_ascii=False)).hex
        rec = {"question_id": question_id, "prompt": prompt, "text": text, "answer_id": answer_id,
               "model_id": self.model_name}
        rec.update(extra)
        rec["metadata"] = {"pruning": self.pruning, "generation": self.generation}
        return rec


# ---------------------------------------------------------------- question files
def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """A LLaVA question file (one JSON object a line); a bad line names file:line."""
    return parse_jsonl(read_text(path, "question file").splitlines(), path)


def read_text(path: str, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing, undecodable or non-file path raises ValueError
    naming it (and where the bad byte is)."""
    full = os.path.expanduser(path)
    if not os.path.isfile(full):
        raise ValueError(f"{what} {path} {'is a directory' if os.path.isdir(full) else 'does not exist'}")
    with open(full, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{what} {path} is not UTF-8 text: byte {raw[err.start]:#04x} at offset {err.start} "
                         f"(line {line}); convert it to UTF-8") from err


# What a question's fields must hold when present.
FIELD_TYPES = {"question_id": ((str, int), "a string or an integer"), "text": ((str,), "a string"),
               "image": ((str,), "a non-empty file name"), "id": ((str, int), "a string or an integer")}


def require_keys(item: Dict[str, Any], keys: Iterable[str], where: str, optional: Iterable[str] = ()) -> None:
    """``item`` has every one of ``keys``; those and the ``optional`` keys it has hold the
    types of FIELD_TYPES (``"image": null`` is an error, not "no image")."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a question must be a JSON object, got {json.dumps(item, ensure_ascii=False)[:200]}")
    keys = list(keys)
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{where}: question lacks {missing}: {json.dumps(item, ensure_ascii=False)[:200]}")
    for key in keys + [k for k in optional if k in item]:
        if key not in FIELD_TYPES:
            continue
        types, what = FIELD_TYPES[key]
        value = item[key]
        if isinstance(value, bool) or not isinstance(value, types) or (key == "image" and not value):
            raise ValueError(f"{where}: question {item.get('question_id', item.get('id'))!r} has {key}="
                             f"{json.dumps(value, ensure_ascii=False)[:80]}; it must be {what}"
                             + (" (leave the key out for a text-only question)" if key == "image" and
                                "image" in optional else ""))


def check_image_files(questions: Sequence[Dict[str, Any]], image_folder: str, where: str) -> None:
    """Every question's ``image`` exists under ``image_folder`` (looked up, not opened)."""
    folder = os.path.expanduser(image_folder or "")
    missing = [q["image"] for q in questions if "image" in q and not os.path.isfile(os.path.join(folder, q["image"]))]
    if missing:
        raise ValueError(f"{where}: {len(missing)} image(s) not found under --image-folder {image_folder!r}, "
                         f"e.g. {missing[:3]}")


def check_unique(questions: Sequence[Dict[str, Any]], where: str) -> None:
    """(question_id, text) must tell the questions apart: it is what a resumed run skips on."""
    seen = set()
    for q in questions:
        key = (str(q["question_id"]), q["text"])
        if key in seen:
            raise ValueError(f"{where}: question {key[0]!r} with text {key[1][:60]!r} appears twice; "
                             "answers could not be told apart")
        seen.add(key)


def limit(items: Iterable[T], max_items: Optional[int]) -> Iterator[T]:
    """The first ``max_items`` items (all when None): the hidden --max-questions cut."""
    for i, item in enumerate(items):
        if max_items is not None and i >= max_items:
            return
        yield item
