"""Label masking of llava.train.preprocess, checked token by token with the tiny LLaMA tokenizer.

The property that matters: the tokens before each supervised answer are exactly what
inference feeds the model for that turn (the prompt with the assistant slot open), and
the supervised tokens are exactly the answer and its end-of-turn separator."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token
from llava.train.preprocess import place_image_token, preprocess_conversation, render

QA = [("What is shown in the image?", "A red square on a white background."),
      ("What color is it?", "Red.")]


@pytest.fixture(scope="module")
def tokenizer(tiny_llava_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava_path)


def _turns(qa, image=True):
    turns = []
    for i, (q, a) in enumerate(qa):
        turns.append({"from": "human", "value": (f"{DEFAULT_IMAGE_TOKEN}\n{q}" if image and i == 0 else q)})
        turns.append({"from": "gpt", "value": a})
    return turns


def _runs(labels):
    """[(start, end)] of the contiguous supervised stretches."""
    runs, start = [], None
    for i, lab in enumerate(labels + [IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _inference_prompt(template, qa, upto, image=True):
    """The prompt inference builds for question ``upto`` (earlier answers filled, this one open)."""
    conv = get_conv_template(template)
    for i, (q, a) in enumerate(qa[:upto + 1]):
        conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{q}" if image and i == 0 else q)
        conv.append_message(conv.roles[1], a if i < upto else None)
    return conv.get_prompt()


@pytest.mark.parametrize("template", ["v1", "vicuna_v1", "llama_2"])
@pytest.mark.parametrize("image", [True, False])
def test_answer_boundaries_token_by_token(tokenizer, template, image):
    out = preprocess_conversation(_turns(QA, image), tokenizer, template, has_image=image)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    assert len(ids) == len(labels)

    # The whole sample is tokenized exactly as inference tokenizes the rendered conversation.
    full = get_conv_template(template)
    for i, (q, a) in enumerate(QA):
        full.append_message(full.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{q}" if image and i == 0 else q)
        full.append_message(full.roles[1], a)
    assert ids == tokenizer_image_token(full.get_prompt(), tokenizer)
    assert ids.count(IMAGE_TOKEN_INDEX) == int(image)
    assert ids[0] == tokenizer.bos_token_id

    runs = _runs(labels)
    assert len(runs) == len(QA)
    for turn, ((start, end), (_, answer)) in enumerate(zip(runs, QA)):
        # everything before the answer is exactly the inference prompt of this turn
        assert ids[:start] == tokenizer_image_token(_inference_prompt(template, QA, turn, image), tokenizer)
        # the answer's tokens, then the end-of-turn token, all supervised with their own ids
        assert labels[start:end] == ids[start:end]
        assert ids[end - 1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[start:end - 1]).strip() == answer
    supervised = sum(end - start for start, end in runs)
    assert sum(lab != IGNORE_INDEX for lab in labels) == supervised
    assert IMAGE_TOKEN_INDEX not in labels


def test_llama_2_rounds_restart_with_bos(tokenizer):
    out = preprocess_conversation(_turns(QA), tokenizer, "llama_2", has_image=True)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    (_, end_first), _ = _runs(labels)
    assert ids[end_first] == tokenizer.bos_token_id  # "<s>[INST]" opens round two, unsupervised
    assert labels[end_first] == IGNORE_INDEX


def test_plain_caption_is_the_only_label(tokenizer):
    caption = "a red square"
    turns = [{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": caption}]
    out = preprocess_conversation(turns, tokenizer, "plain", has_image=True)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    # the prompt is only the image (the human text is dropped, as in LLaVA's pretraining)
    assert ids[:2] == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert labels[2:] == ids[2:]
    assert ids == tokenizer_image_token(DEFAULT_IMAGE_TOKEN + caption + "\n", tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids[-1]) == "<0x0A>"
    assert tokenizer.decode(ids[2:]).strip() == caption


class PairTokenizer:
    """Cuts text into two-character tokens from its start, so a prefix of odd length ends in
    a one-character token that the full text does not have: a boundary inside a token."""
    bos_token_id = 1

    def __call__(self, text):
        pieces = [text[i:i + 2] for i in range(0, len(text), 2)]
        return SimpleNamespace(input_ids=[1] + [10 + sum(ord(c) << (16 * k) for k, c in enumerate(p)) for p in pieces])


def test_mismatch_warns_and_drops_the_labels(caplog):
    tok = PairTokenizer()
    # pick the question whose answer boundary falls at an odd character offset
    question = next(q for q in ("Hi?", "Hi!?") if render(_turns([(q, "Yes.")], image=False), "v1")[1][0][0] % 2 == 1)
    with caplog.at_level(logging.WARNING, logger="llava.train.preprocess"):
        out = preprocess_conversation(_turns([(question, "Yes.")], image=False), tok, "v1", has_image=False, sample_id="s7")
    assert "tokenization mismatch" in caplog.text and "s7" in caplog.text
    assert (out["labels"] == IGNORE_INDEX).all()
    assert len(out["input_ids"]) > 1


def test_truncation_and_leading_assistant_turn(tokenizer):
    turns = [{"from": "gpt", "value": "I start."}] + _turns(QA)
    full = preprocess_conversation(turns, tokenizer, "v1", has_image=True)
    assert full["input_ids"].tolist() == preprocess_conversation(_turns(QA), tokenizer, "v1", has_image=True)["input_ids"].tolist()
    cut = preprocess_conversation(turns, tokenizer, "v1", has_image=True, max_length=12)
    assert cut["input_ids"].tolist() == full["input_ids"][:12].tolist()
    assert cut["labels"].tolist() == full["labels"][:12].tolist()


def test_image_tag_placement():
    turns = [{"from": "human", "value": "What is this? <image>"}, {"from": "gpt", "value": "A cat."}]
    assert place_image_token(turns, True, False)[0]["value"] == "<image>\nWhat is this?"
    assert place_image_token(turns, True, True)[0]["value"] == "<im_start><image><im_end>\nWhat is this?"
    untagged = [{"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A cat."}]
    assert place_image_token(untagged, True, False)[0]["value"] == "<image>\nWhat is this?"
    with pytest.raises(ValueError, match="without an 'image'"):
        place_image_token(turns, False, False)


@pytest.mark.parametrize("turns, match", [
    ([{"from": "robot", "value": "hi"}], "from='robot'"),
    ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "alternate"),
    ([{"value": "a"}], "'from' and 'value'"),
])
def test_bad_conversations_raise(tokenizer, turns, match):
    with pytest.raises(ValueError, match=match):
        preprocess_conversation(turns, tokenizer, "v1", has_image=False)


def test_unknown_template_and_plain_misuse(tokenizer):
    with pytest.raises(ValueError, match="unknown conversation template"):
        preprocess_conversation(_turns(QA[:1]), tokenizer, "v9", has_image=True)
    with pytest.raises(ValueError, match="one \\(image, caption\\) pair"):
        preprocess_conversation(_turns(QA), tokenizer, "plain", has_image=True)
