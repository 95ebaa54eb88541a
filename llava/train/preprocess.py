"""A LLaVA conversation -> (input_ids, labels), with only the assistant's answers supervised.

LLaVA computes the answer boundaries by tokenizing each round separately and subtracting
fixed offsets (the ``-2`` of the legacy LLaMA tokenizer). Under transformers 5.x every call
adds BOS and the leading-space rules changed, so those offsets are wrong. Here the
boundaries come from tokenizing the rendered prompt *up to* each boundary with the same
function inference uses (``tokenizer_image_token``): the prefix up to "ASSISTANT:" is
exactly what the model is given at inference time, so the first supervised token is
exactly the first token it must generate. Every prefix is checked token by token against
the full tokenization; if a token straddles a boundary the sample's labels are dropped and
a "tokenization mismatch" warning is logged, as LLaVA does.

Templates: any append-only ``conv_templates`` entry (``v1``/``vicuna_v1``/``llava_v1``,
``llama_2``/``llava_llama_2``, ``mistral_instruct``, ``mpt``, ``llava_v0``) and ``plain``
(pretraining: the image is the prompt, the caption the label).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle, get_conv_template
from llava.mm_utils import tokenizer_image_token

logger = logging.getLogger(__name__)

USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


def place_image_token(turns: Sequence[Dict[str, str]], has_image: bool, mm_use_im_start_end: bool) -> List[Dict[str, str]]:
    """LLaVA's layout: the single ``<image>`` tag opens its turn, followed by a newline.

    An image sample without a tag gets one in front of the first turn (else the image
    would be silently dropped); a text-only sample with a tag is an error."""
    tagged = [DEFAULT_IMAGE_TOKEN in t["value"] for t in turns]
    if not has_image:
        if any(tagged):
            raise ValueError("a sample without an 'image' has an <image> tag in its conversation")
        return [dict(t) for t in turns]
    out = []
    first = tagged.index(True) if any(tagged) else 0
    for i, turn in enumerate(turns):
        value = turn["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip() if tagged[i] or i == first else turn["value"]
        if i == first:
            tag = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if mm_use_im_start_end else DEFAULT_IMAGE_TOKEN
            value = f"{tag}\n{value}"
        out.append({**turn, "value": value})
    return out


def _check_roles(turns: Sequence[Dict[str, str]]) -> List[Dict[str, str]]:
    """Drop a leading assistant turn (as LLaVA does), then demand user/assistant alternation."""
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"turn {i} must be a dict with 'from' and 'value', got {turn!r}")
        if turn["from"] not in USER_ROLES + ASSISTANT_ROLES:
            raise ValueError(f"turn {i} has from={turn['from']!r}; accepted: {USER_ROLES + ASSISTANT_ROLES}")
    turns = list(turns)
    if turns and turns[0]["from"] in ASSISTANT_ROLES:
        turns = turns[1:]
    for i, turn in enumerate(turns):
        expected = USER_ROLES if i % 2 == 0 else ASSISTANT_ROLES
        if turn["from"] not in expected:
            raise ValueError(f"turn {i} is from {turn['from']!r} but the conversation must alternate user/assistant "
                             f"starting with the user")
    if not turns:
        raise ValueError("the conversation has no user turn")
    return turns


def render(turns: Sequence[Dict[str, str]], template: str) -> Tuple[str, List[Tuple[int, int]]]:
    """(prompt text, [(start, end)] character spans of the supervised answers).

    An answer span starts where the prompt with the assistant slot left open ends (after
    "ASSISTANT:" for v1, after "[/INST]" for llama_2) and ends after the answer's separator
    (``</s>``), so the model learns to stop."""
    conv = get_conv_template(template)
    if conv.sep_style == SeparatorStyle.PLAIN:
        return _render_plain(turns, conv.sep)
    spans: List[Tuple[int, int]] = []
    partials: List[str] = []
    for turn in turns:
        if turn["from"] in USER_ROLES:
            conv.append_message(conv.roles[0], turn["value"])
            continue
        conv.append_message(conv.roles[1], None)
        opened = conv.get_prompt()
        conv.messages[-1][1] = turn["value"]
        closed = conv.get_prompt()
        partials += [opened, closed]
        spans.append((len(opened), len(closed)))
    text = conv.get_prompt()
    if not all(text.startswith(p) for p in partials):
        raise ValueError(f"template {template!r} does not render a conversation by appending turns; "
                         f"its answer boundaries cannot be located")
    return text, spans


def _render_plain(turns: Sequence[Dict[str, str]], sep: str) -> Tuple[str, List[Tuple[int, int]]]:
    """Pretraining captions: the prompt is only the image tag, the label the caption + sep."""
    if len(turns) != 2:
        raise ValueError(f"the 'plain' template takes one (image, caption) pair per sample, got {len(turns)} turns")
    prompt = turns[0]["value"].split("\n", 1)[0] if DEFAULT_IMAGE_TOKEN in turns[0]["value"] else ""
    if not prompt:
        raise ValueError("the 'plain' template needs an image sample (its first turn holds the <image> tag)")
    text = prompt + turns[1]["value"] + sep
    return text, [(len(prompt), len(text))]


def tokenize_with_labels(text: str, spans: Sequence[Tuple[int, int]], tokenizer, max_length: Optional[int] = None,
                         sample_id: str = "?") -> Tuple[torch.Tensor, torch.Tensor]:
    """input_ids [T] as inference tokenizes ``text``; labels [T] equal to input_ids inside
    ``spans`` and IGNORE_INDEX elsewhere (all IGNORE_INDEX on a tokenization mismatch)."""
    ids = tokenizer_image_token(text, tokenizer, IMAGE_TOKEN_INDEX)
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        bounds = []
        for pos in (start, end):
            prefix = tokenizer_image_token(text[:pos], tokenizer, IMAGE_TOKEN_INDEX)
            if ids[:len(prefix)] != prefix:
                first_diff = next((i for i, (a, b) in enumerate(zip(prefix, ids)) if a != b), min(len(prefix), len(ids)))
                logger.warning("WARNING: tokenization mismatch in sample %s: the tokens of the text up to character %d "
                               "differ from the full prompt's at token %d (%d vs. %d tokens); its labels are ignored",
                               sample_id, pos, first_diff, len(prefix), len(ids))
                labels = [IGNORE_INDEX] * len(ids)
                return _to_tensors(ids, labels, max_length)
            bounds.append(len(prefix))
        labels[bounds[0]:bounds[1]] = ids[bounds[0]:bounds[1]]
    labels = [IGNORE_INDEX if tok == IMAGE_TOKEN_INDEX else lab for tok, lab in zip(ids, labels)]
    return _to_tensors(ids, labels, max_length)


def _to_tensors(ids: List[int], labels: List[int], max_length: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def preprocess_conversation(turns: Sequence[Dict[str, str]], tokenizer, template: str, has_image: bool,
                            mm_use_im_start_end: bool = False, max_length: Optional[int] = None,
                            sample_id: str = "?") -> Dict[str, torch.Tensor]:
    """One LLaVA json sample's conversations -> {"input_ids": [T], "labels": [T]}."""
    turns = place_image_token(_check_roles(turns), has_image, mm_use_im_start_end)
    text, spans = render(turns, template)
    input_ids, labels = tokenize_with_labels(text, spans, tokenizer, max_length, sample_id)
    return {"input_ids": input_ids, "labels": labels}
