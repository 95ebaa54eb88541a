"""Conversation templates with LLaVA's names, separators and system prompts.

``conv_templates[name].copy()`` gives a fresh conversation; ``append_message(role, text)``
adds a turn (``None`` text leaves the assistant slot open) and ``get_prompt()`` renders
it the way the original checkpoints were trained.
"""
from __future__ import annotations

import copy
import dataclasses
from enum import Enum, auto
from typing import Any, List, Optional, Tuple


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

    def get_prompt(self) -> str:
        msgs = self.messages
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
            return self._llama_2_prompt()
        if self.sep_style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2 or "")  # the original leaves sep2 unset here
            out = self.system
            for i, (_, message) in enumerate(msgs):
                if message:
                    out += self._text(message) + seps[i % 2]
            return out
        raise ValueError(f"invalid sep_style {self.sep_style!r}")

    def _llama_2_prompt(self) -> str:
        out = ""
        for i, (role, message) in enumerate(self.messages):
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

default_conversation = conv_vicuna_v1
conv_templates = {
    "default": conv_vicuna_v1,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "llava_v1": conv_llava_v1,
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
