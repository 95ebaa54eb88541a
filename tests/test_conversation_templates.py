"""Conversation templates against the original LLaVA's rules, as hand-written snapshots.

The rules (from the original's llava/conversation.py): ``default`` and ``v0`` are Vicuna v0
with two example turns (offset 2); ``v0_mmtag`` / ``v1_mmtag`` open with a user turn
``<Image><image></Image>`` answered by ``Received.``; a first turn given as
``(text, image, mode)`` loses its ``<image>`` tags and gets one in front
(``"<image>\\n" + text.strip()``), except in the mmtag templates; ``get_images`` collects the
images of the user turns from ``offset`` on, padded ("Pad", background (122, 116, 104)),
resized ("Resize": 336 x 336) or kept, then shrunk when the longer side exceeds 1344."""
from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from llava.conversation import conv_templates, default_conversation, get_conv_template

HUMAN_SYS = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
             "detailed, and polite answers to the human's questions.")
USER_SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions.")
MMTAG_SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant is able to "
             "understand the visual content that the user provides, and assist the user with a variety of tasks using "
             "natural language.The visual content will be provided with the following format: "
             "<Image>visual content</Image>.")
V0_QUESTION = "What are the key differences between renewable and non-renewable energy sources?"
# Length and sha256 of the original's example answer (taken from its file once).
V0_ANSWER_LEN = 1383
V0_ANSWER_SHA256 = "29c0f588aa19dd652ecdbf8232a0bc4d15f087000ce6512fd8b0a5ac4605bad3"


def _ask(name, first, answer=None):
    conv = get_conv_template(name)
    conv.append_message(conv.roles[0], first)
    conv.append_message(conv.roles[1], answer)
    return conv


def test_the_original_template_names_exist():
    original = {"default", "v0", "v1", "vicuna_v1", "llama_2", "mistral_instruct", "chatml_direct", "mistral_direct",
                "plain", "v0_plain", "llava_v0", "v0_mmtag", "llava_v1", "v1_mmtag", "llava_llama_2", "mpt"}
    assert original <= set(conv_templates)
    assert conv_templates["default"] is conv_templates["v0"] is conv_templates["vicuna_v0"]
    assert default_conversation is conv_templates["vicuna_v1"]  # as in the original: not the "default" entry


def test_vicuna_v0_has_its_two_example_turns():
    conv = get_conv_template("v0")
    assert conv.offset == 2 and conv.roles == ("Human", "Assistant") and conv.sep == "###"
    (r0, question), (r1, answer) = conv.messages
    assert (r0, r1, question) == ("Human", "Assistant", V0_QUESTION)
    assert len(answer) == V0_ANSWER_LEN and hashlib.sha256(answer.encode()).hexdigest() == V0_ANSWER_SHA256
    assert answer.startswith("Renewable energy sources are those that can be replenished naturally")
    assert answer.endswith("their depletion can lead to economic and social instability.\n")
    conv.append_message("Human", "<image>\nWhat is it?")
    conv.append_message("Assistant", None)
    assert conv.get_prompt() == (f"{HUMAN_SYS}###Human: {V0_QUESTION}###Assistant: {answer}"
                                 "###Human: <image>\nWhat is it?###Assistant:")
    # The chat view and get_images skip the examples.
    assert conv.to_gradio_chatbot() == [["<image>\nWhat is it?", None]]
    assert get_conv_template("v0").messages is not conv_templates["v0"].messages


def test_v0_tuple_turn_after_the_examples_keeps_its_text():
    """The tag is moved only when the very first message is the (text, image, mode) one."""
    conv = get_conv_template("v0")
    conv.append_message("Human", ("What? <image>", Image.new("RGB", (8, 8)), "Default"))
    conv.append_message("Assistant", None)
    assert conv.get_prompt().endswith("###Human: What? <image>###Assistant:")


@pytest.mark.parametrize("name, expected", [
    ("v0_mmtag", MMTAG_SYS + "###Human: <Image><image></Image>###Assistant: Received.###Human: What is it?###Assistant:"),
    ("v1_mmtag", MMTAG_SYS + " USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is it? ASSISTANT:"),
    ("v1", USER_SYS + " USER: <image>\nWhat is it? ASSISTANT:"),
    ("llava_v1", HUMAN_SYS + " USER: <image>\nWhat is it? ASSISTANT:"),
    ("llava_v0", HUMAN_SYS + "###Human: <image>\nWhat is it?###Assistant:"),
    ("plain", "<image>\nWhat is it?\n"),
    ("mistral_instruct", "[INST] <image>\nWhat is it? [/INST]"),
    ("chatml_direct", "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?"
                      "<|im_end|><|im_start|>assistant\n"),
])
def test_first_message_as_text_image_mode_tuple(name, expected):
    conv = _ask(name, ("  What is it? <image> ", Image.new("RGB", (8, 8)), "Default"))
    assert conv.get_prompt() == expected


def test_tuple_layout_with_answers_and_llama_2():
    conv = _ask("v1_mmtag", ("<image>\nWhat is it?", None, "Pad"), "A cat.")
    conv.append_message("USER", "And?")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == (MMTAG_SYS + " USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is it? "
                                 "ASSISTANT: A cat.</s>USER: And? ASSISTANT:")
    conv = _ask("llava_llama_2", ("Compare <image> this", None, "Default"), "Same.")
    system = conv.system
    assert conv.get_prompt() == f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n<image>\nCompare  this [/INST] Same. </s>"
    # The stored messages are not rewritten by rendering.
    assert conv.messages[0][1][0] == "Compare <image> this"


def test_mmtag_templates_without_images_render_plainly():
    assert _ask("v1_mmtag", "Hi").get_prompt() == MMTAG_SYS + " USER: Hi ASSISTANT:"
    assert _ask("v0_mmtag", "Hi").get_prompt() == MMTAG_SYS + "###Human: Hi###Assistant:"


def _decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_get_images_modes_and_sizes():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    conv = _ask("v1", ("<image>\nA", wide, "Pad"), ("not collected: an assistant turn", wide, "Pad"))
    conv.append_message("USER", ("B", Image.new("RGB", (30, 50)), "Resize"))
    conv.append_message("ASSISTANT", None)
    conv.append_message("USER", ("C", Image.new("RGB", (2000, 900)), "Default"))
    conv.append_message("ASSISTANT", None)
    conv.append_message("USER", ("D", Image.new("RGB", (900, 2000)), "Crop"))
    pil = conv.get_images(return_pil=True)
    # 2000 x 900: aspect 2.222; shorter side int(min(1344 / 2.222, 672, 900)) = 604, longer int(604 * 2.222) = 1342.
    assert [im.size for im in pil] == [(40, 40), (336, 336), (1342, 604), (604, 1342)]
    assert pil[0].getpixel((0, 0)) == (122, 116, 104) and pil[0].getpixel((20, 20)) == (255, 0, 0)
    assert pil[0].getpixel((20, 9)) == (122, 116, 104) and pil[0].getpixel((20, 10)) == (255, 0, 0)  # (40 - 20) // 2
    encoded = conv.get_images()
    assert all(isinstance(x, str) for x in encoded)
    assert [(_decoded(x).format, _decoded(x).size) for x in encoded] == [("PNG", im.size) for im in pil]
    with pytest.raises(ValueError, match="image_process_mode"):
        _ask("v1", ("x", wide, "Stretch")).get_images()


def test_get_images_skips_the_offset_turns():
    conv = get_conv_template("v0")
    conv.messages[0][1] = ("example", Image.new("RGB", (4, 4)), "Default")  # inside the offset
    conv.append_message("Human", ("Q", Image.new("RGB", (6, 6)), "Default"))
    assert [im.size for im in conv.get_images(return_pil=True)] == [(6, 6)]
