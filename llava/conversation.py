"""Conversation templates with LLaVA's names, separators and system prompts.

``conv_templates[name].copy()`` gives a fresh conversation; ``append_message(role, text)``
adds a turn (``None`` text leaves the assistant slot open) and ``get_prompt()`` renders
it the way the original checkpoints were trained. The template names, and what ``default``
means (``vicuna_v0``, with its two example turns), are the original's.
"""
from __future__ import annotations

import copy
import dataclasses
from enum import Enum, auto
from typing import Any, List, Optional, Tuple

from llava.constants import (DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER, MC_PROMPT,
                             MC_PROMPT_CN, SHORT_ANSWER_PROMPT)


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: Tuple[str, str]
    messages: List[List[Any]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: Optional[str] = None
    version: str = "Unknown"
    skip_next: bool = False

    @staticmethod
    def _text(message: Any) -> str:
        # A turn may be (text, image, image_process_mode) as in LLaVA's gradio demo.
        return message[0] if isinstance(message, tuple) else message

    def laid_out_messages(self) -> List[List[Any]]:
        """The turns as ``get_prompt`` renders them. As in the original, a first turn given as
        ``(text, image, image_process_mode)`` has its ``<image>`` tags taken out and one put
        back in front (``"<image>\n" + text``); an ``mmtag`` template instead opens with a
        user turn ``<Image><image></Image>`` answered by ``Received.``."""
        msgs = [list(m) for m in self.messages]
        if msgs and type(msgs[0][1]) is tuple:
            role, first = msgs[0]
            text = first[0].replace("<image>", "").strip()
            if "mmtag" in (self.version or ""):
                msgs[0] = [role, text]
                msgs[:0] = [[self.roles[0], "<Image><image></Image>"], [self.roles[1], "Received."]]
            else:
                msgs[0] = [role, "<image>\n" + text]
        return msgs

    def get_prompt(self) -> str:
        msgs = self.laid_out_messages()
        if self.sep_style == SeparatorStyle.SINGLE:
            out = self.system + self.sep
            for role, message in msgs:
                out += f"{role}: {self._text(message)}{self.sep}" if message else f"{role}:"
            return out
        if self.sep_style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, message) in enumerate(msgs):
                out += f"{role}: {self._text(message)}{seps[i % 2]}" if message else f"{role}:"
            return out
        if self.sep_style == SeparatorStyle.MPT:
            out = self.system + self.sep
            for role, message in msgs:
                out += f"{role}{self._text(message)}{self.sep}" if message else role
            return out
        if self.sep_style == SeparatorStyle.LLAMA_2:
            return self._llama_2_prompt(msgs)
        if self.sep_style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2 or "")  # the original leaves sep2 unset here
            out = self.system
            for i, (_, message) in enumerate(msgs):
                if message:
                    out += self._text(message) + seps[i % 2]
            return out
        raise ValueError(f"invalid sep_style {self.sep_style!r}")

    def _llama_2_prompt(self, msgs: List[List[Any]]) -> str:
        out = ""
        for i, (role, message) in enumerate(msgs):
            if i == 0 and (not message or role != self.roles[0]):
                raise ValueError("a LLAMA_2 conversation must start with a non-empty user message")
            if not message:
                continue
            text = self._text(message)
            if i == 0 and self.system:
                text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{text}"
            out += f"{self.sep}[INST] {text} [/INST]" if i % 2 == 0 else f" {text} {self.sep2}"
        return out[len(self.sep):] if self.sep and out.startswith(self.sep) else out

    def append_message(self, role: str, message: Any) -> None:
        self.messages.append([role, message])

    def process_image(self, image, image_process_mode: str, return_pil: bool = False, image_format: str = "PNG",
                      max_len: int = 1344, min_len: int = 672):
        """One image of the demo as the original prepares it: "Pad" centres it on a
        (122, 116, 104) square, "Resize" makes it 336x336, "Default"/"Crop" keep it; then an
        image whose longer side exceeds ``max_len`` is scaled down, keeping its aspect
        ratio, to a shorter side of at most ``min_len`` (and the longer one at most about
        ``max_len``). A PIL image with ``return_pil``, else its base64 ``image_format`` bytes."""
        if image_process_mode == "Pad":
            from llava.mm_utils import expand2square

            image = expand2square(image, (122, 116, 104))
        elif image_process_mode == "Resize":
            image = image.resize((336, 336))
        elif image_process_mode not in ("Default", "Crop"):
            raise ValueError(f"invalid image_process_mode {image_process_mode!r}; accepted: Pad, Resize, Default, Crop")
        if max(image.size) > max_len:
            long_side, short_side = max(image.size), min(image.size)
            aspect = long_side / short_side
            short_edge = int(min(max_len / aspect, min_len, short_side))
            long_edge = int(short_edge * aspect)
            width, height = image.size
            image = image.resize((short_edge, long_edge) if height > width else (long_edge, short_edge))
        if return_pil:
            return image
        import base64
        from io import BytesIO

        buf = BytesIO()
        image.save(buf, format=image_format)
        return base64.b64encode(buf.getvalue()).decode()

    def get_images(self, return_pil: bool = False) -> list:
        """The images of the user turns from ``offset`` on (turns given as
        ``(text, image, image_process_mode)``), through :meth:`process_image`."""
        images = []
        for i, (_, message) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0 and type(message) is tuple:
                _, image, mode = message
                images.append(self.process_image(image, mode, return_pil=return_pil))
        return images

    def copy(self) -> "Conversation":
        return Conversation(system=self.system, roles=self.roles, messages=copy.deepcopy(self.messages),
                            offset=self.offset, sep_style=self.sep_style, sep=self.sep, sep2=self.sep2,
                            version=self.version, skip_next=self.skip_next)

    def to_gradio_chatbot(self) -> List[List[Optional[str]]]:
        pairs: List[List[Optional[str]]] = []
        for i, (_, message) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0:
                pairs.append([self._text(message) if message else None, None])
            else:
                pairs[-1][-1] = self._text(message) if message else None
        return pairs

    def dict(self) -> dict:
        return {"system": self.system, "roles": self.roles, "offset": self.offset, "sep": self.sep, "sep2": self.sep2,
                "messages": [[r, self._text(m) if m else m] for r, m in self.messages]}


_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering something "
    "not correct. If you don't know the answer to a question, please don't share false information.")
_LLAVA_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                         "that the user provides, and assist the user with a variety of tasks using natural language.")

_MMTAG_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant is able to understand the visual content that the user provides, and assist the user "
                 "with a variety of tasks using natural language."  # (no space here in the original either)
                 "The visual content will be provided with the following format: <Image>visual content</Image>.")
# The two example turns that Vicuna v0 prompts open with (offset=2 keeps them out of the chat view).
_V0_EXAMPLE_QUESTION = "What are the key differences between renewable and non-renewable energy sources?"
_V0_EXAMPLE_ANSWER = (
    "Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, "
    "such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are finite "
    "and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences between "
    "renewable and non-renewable energy sources:\n"
    "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources are "
    "finite and will eventually run out.\n"
    "2. Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable "
    "sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n"
    "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower "
    "operational costs than non-renewable sources.\n"
    "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote locations than "
    "non-renewable sources.\n"
    "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different situations and "
    "needs, while non-renewable sources are more rigid and inflexible.\n"
    "6. Sustainability: Renewable energy sources are more sustainable over the long term, while non-renewable "
    "sources are not, and their depletion can lead to economic and social instability.\n")

conv_vicuna_v0 = Conversation(system=_HUMAN_SYSTEM, roles=("Human", "Assistant"),
                              messages=[["Human", _V0_EXAMPLE_QUESTION], ["Assistant", _V0_EXAMPLE_ANSWER]], offset=2,
                              sep_style=SeparatorStyle.SINGLE, sep="###")
conv_vicuna_v1 = Conversation(system=_VICUNA_SYSTEM, roles=("USER", "ASSISTANT"), version="v1", messages=[], offset=0,
                              sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>")
conv_llama_2 = Conversation(system=_LLAMA_2_SYSTEM, roles=("USER", "ASSISTANT"), version="llama_v2", messages=[], offset=0,
                            sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>")
conv_llava_llama_2 = Conversation(system=_LLAVA_LLAMA_2_SYSTEM, roles=("USER", "ASSISTANT"), version="llama_v2", messages=[],
                                  offset=0, sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>")
conv_mistral_instruct = Conversation(system="", roles=("USER", "ASSISTANT"), version="llama_v2", messages=[], offset=0,
                                     sep_style=SeparatorStyle.LLAMA_2, sep="", sep2="</s>")
conv_chatml_direct = Conversation(system="<|im_start|>system\nAnswer the questions.",
                                  roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), version="mpt", messages=[],
                                  offset=0, sep_style=SeparatorStyle.MPT, sep="<|im_end|>")
conv_mpt = Conversation(system="<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
                               "The assistant gives helpful and honest answers.",
                        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), version="mpt", messages=[], offset=0,
                        sep_style=SeparatorStyle.MPT, sep="<|im_end|>")
conv_llava_plain = Conversation(system="", roles=("", ""), messages=[], offset=0, sep_style=SeparatorStyle.PLAIN, sep="\n")
conv_llava_v0 = Conversation(system=_HUMAN_SYSTEM, roles=("Human", "Assistant"), messages=[], offset=0,
                             sep_style=SeparatorStyle.SINGLE, sep="###")
conv_llava_v1 = Conversation(system=_HUMAN_SYSTEM, roles=("USER", "ASSISTANT"), version="v1", messages=[], offset=0,
                             sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>")
conv_llava_v0_mmtag = Conversation(system=_MMTAG_SYSTEM, roles=("Human", "Assistant"), messages=[], offset=0,
                                   sep_style=SeparatorStyle.SINGLE, sep="###", version="v0_mmtag")
conv_llava_v1_mmtag = Conversation(system=_MMTAG_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], offset=0,
                                   sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>", version="v1_mmtag")

default_conversation = conv_vicuna_v1
conv_templates = {
    "default": conv_vicuna_v0,  # as in the original (its default_conversation is vicuna_v1)
    "v0": conv_vicuna_v0,
    "vicuna_v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of template ``name``; an unknown name lists the known ones."""
    if name not in conv_templates:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(sorted(conv_templates))}")
    return conv_templates[name].copy()


def infer_conv_mode(model_name: str) -> str:
    """The template LLaVA's CLI picks for a model name (the original's substring rules)."""
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


# ---------------------------------------------------------------- the one prompt builder
def image_tag(mm_use_im_start_end: bool) -> str:
    """The text that stands for one image: ``<image>``, wrapped in ``<im_start>``/``<im_end>``
    for checkpoints trained with them."""
    return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if mm_use_im_start_end else DEFAULT_IMAGE_TOKEN


def user_message(text: str, num_images: int = 1, *, mm_use_im_start_end: bool = False,
                 keep_placed_tags: bool = False) -> str:
    """The first user message of a prompt about ``num_images`` images, as LLaVA's entry points write it.

    - with ``keep_placed_tags`` (``run_llava``, the lmms-eval plugin), every
      ``<image-placeholder>`` in ``text`` becomes an image tag, and text that already holds
      ``<image>`` is left as the caller placed it;
    - otherwise, and when no tag was placed, ``num_images`` tags, space-separated, then a newline, then the text
      (``model_vqa*``: ``"<image>\n" + question``; the chat CLI's first turn).
    ``num_images=0`` gives the text unchanged."""
    if num_images == 0:
        return text
    tag = image_tag(mm_use_im_start_end)
    if keep_placed_tags and IMAGE_PLACEHOLDER in text:
        return text.replace(IMAGE_PLACEHOLDER, tag)
    if keep_placed_tags and DEFAULT_IMAGE_TOKEN in text:
        return text
    return " ".join([tag] * num_images) + "\n" + text


def build_prompt(question: str, conv_mode: str, num_images: int = 1, *, mm_use_im_start_end: bool = False,
                 keep_placed_tags: bool = False) -> str:
    """One user turn (see :func:`user_message`) and the open assistant turn of template ``conv_mode``."""
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], user_message(question, num_images, mm_use_im_start_end=mm_use_im_start_end,
                                                    keep_placed_tags=keep_placed_tags))
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


ANSWER_FORMAT_SENTENCES = (SHORT_ANSWER_PROMPT, MC_PROMPT, MC_PROMPT_CN)


def question_text(text: str) -> str:
    """A free-form question as a text-conditioned pruner (CDPruner's ``pruning_text``) should
    see it: image tags and the eval prompts' answer-format sentences removed."""
    for tag in (DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN, DEFAULT_IMAGE_TOKEN):
        text = text.replace(tag, "")
    for sentence in ANSWER_FORMAT_SENTENCES:
        text = text.replace("\n" + sentence, "").replace(sentence, "")
    return text.strip()
