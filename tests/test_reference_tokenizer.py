"""Prompt token ids against the original LLaVA's own tokenizer.

The original loads LLaMA checkpoints with ``AutoTokenizer.from_pretrained(path,
use_fast=False)``: transformers 4.37.2's slow sentencepiece ``LlamaTokenizer``. The side
virtualenv (scripts/install_reference_venv.sh) runs exactly that on the same
``tokenizer.model`` files, with the original's ``<image>`` splitting rule written out
below, and every prompt of a corpus of awkward ones (spaces around tags, several tags,
newlines, unicode, digits, the templates' real prompts, every prefix the training masks
are computed from) must give the same ids through our ``tokenizer_image_token``."""
from __future__ import annotations

import io
import json
import os
import shutil

import pytest

from reference_venv import run_reference

pytestmark = pytest.mark.subprocess

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
IMAGE_TOKEN_INDEX = -200
MM_TOKENS = (["<im_patch>"], ["<im_start>", "<im_end>"])  # added as LLaVA's loader adds them

# The side-venv half: 4.37.2's slow tokenizer and the original's splitting rule (each text
# chunk between <image> tags tokenized on its own, the tags become -200, and only the first
# chunk keeps the BOS every chunk starts with).
REFERENCE_SCRIPT = r'''
from transformers import AutoTokenizer, LlamaTokenizer

def split_on_images(prompt, tok, image_index):
    chunks = [tok(chunk).input_ids for chunk in prompt.split("<image>")]
    skip = 1 if chunks[0][:1] == [tok.bos_token_id] else 0
    ids = list(chunks[0][:skip])
    for n, chunk in enumerate(chunks):
        if n:
            ids.append(image_index)
        ids.extend(chunk[skip:])
    return ids

out = {}
for case in payload["cases"]:
    tok = AutoTokenizer.from_pretrained(case["dir"], use_fast=False)
    assert type(tok) is LlamaTokenizer, type(tok)
    for group in case["added"]:
        tok.add_tokens(group, special_tokens=True)
    out[case["name"]] = {"legacy": tok.legacy, "len": len(tok),
                         "ids": [split_on_images(p, tok, payload["image_index"]) for p in payload["prompts"]]}
answer(out)
'''

TRICKY = [
    "", " ", "  ", "\n", "<image>", "<image>\n", "<image> ", " <image>", "<image><image>", "<image>\n<image>\n",
    "<image> <image> What differs?", "<image>\n<image>\nWhat differs between the two images?",
    "USER: <image> ASSISTANT:", "USER: <image>\nWhat is shown? ASSISTANT:", "<image> ASSISTANT:",
    "Describe <image> in detail.", "Compare <image>and<image> please", "  leading spaces", "trailing spaces   ",
    " both ", "a   b    c", "tab\tseparated\ttext", "\n\nblank lines\n\n", "line one\nline two\r\nline three",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "\u65e5\u672c\u8a9e\u306e\u8cea\u554f", "emoji \U0001F600\U0001F44D",
    "\u201cquotes\u201d \u2014 dashes \u2013 and \u2026", "\u2581starts with the marker", "mid\u2581marker", "\u2581",
    "digits 0123456789 3.14159 2024-01-01 1,000,000", "12345", " 42", "A. B. C. D.",
    "</s>", "</s> USER:", " </s>", "answer</s>USER: next", "<s>", "<s>hello", " <s> hi", "<unk>", "x<unk>y",
    "<im_patch>", "<im_start><image><im_end>\nWhat is it?", " <im_patch> spaced",
    "[INST] <<SYS>>\nsys\n<</SYS>>\n\nQ [/INST]", "<|im_start|>user\nhi<|im_end|><|im_start|>assistant\n",
    "Human: Hi###Assistant:", "    def f(x):\n        return x  # indented code",
    "Answer the question using a single word or phrase.", "'s 're n't", "UPPER lower MiXeD",
]


def _template_prompts():
    from llava.conversation import conv_templates

    prompts = []
    for name, template in sorted(conv_templates.items()):
        one = template.copy()
        one.append_message(one.roles[0], "<image>\nWhat is shown in the image?")
        one.append_message(one.roles[1], None)
        two = template.copy()
        two.append_message(two.roles[0], "<image>\nWhat is shown in the image?")
        two.append_message(two.roles[1], "A red square on a white background.")
        two.append_message(two.roles[0], "What color is it?")
        two.append_message(two.roles[1], "Red.")
        tup = template.copy()
        tup.append_message(tup.roles[0], ("What differs? <image>", None, "Default"))
        tup.append_message(tup.roles[1], None)
        prompts += [one.get_prompt(), two.get_prompt(), tup.get_prompt()]
    return prompts


def _training_prompts():
    """The training fixtures rendered as training renders them, and every prefix of one
    two-round v1 and one llama_2 prompt (the masks come from prefix tokenizations)."""
    from llava.train.preprocess import _check_roles, place_image_token, render

    samples = json.load(open(os.path.join(REPO, "playground", "fixtures", "train", "conversations.json")))
    prompts = []
    for template in ("v1", "llava_llama_2", "plain"):
        for s in samples:
            if template == "plain" and ("image" not in s or len(s["conversations"]) != 2):
                continue
            text, _ = render(place_image_token(_check_roles(s["conversations"]), "image" in s, False), template)
            prompts.append(text)
    for template in ("v1", "llava_llama_2"):
        two_round = next(s for s in samples if "image" in s and len(s["conversations"]) == 4)
        text, _ = render(place_image_token(_check_roles(two_round["conversations"]), True, False), template)
        prompts += [text[:i] for i in range(1, len(text))]
    return prompts


def corpus():
    seen, out = set(), []
    for p in TRICKY + _template_prompts() + _training_prompts():
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _train_llama_like(out_dir: str) -> None:
    """A sentencepiece model closer to LLaMA's than the tiny one: whitespace-only pieces
    ("\u2581\u2581", "\u2581\u2581\u2581\u2581"), digits split, byte fallback."""
    import sentencepiece as spm

    from llava.model.tiny import _CORPUS

    text = list(_CORPUS) + ["    def f(x):\n        return x", "  two  spaces  apart  ", "\t\ttabs", "1 22 333 4444"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text * 8), model_writer=buf, vocab_size=520, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True, character_coverage=1.0, minloglevel=2)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    _write_config(out_dir, {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                            "legacy": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                            "pad_token": "<unk>", "clean_up_tokenization_spaces": False})


def _write_config(out_dir, cfg):
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def _variant(src: str, dst: str, **changes) -> str:
    """A copy of the tokenizer files of ``src`` with ``tokenizer_config.json`` changed
    (a value of None removes the key)."""
    os.makedirs(dst)
    for name in ("tokenizer.model", "special_tokens_map.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), dst)
    cfg = json.load(open(os.path.join(src, "tokenizer_config.json")))
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    _write_config(dst, cfg)
    return dst


@pytest.fixture(scope="module")
def cases(tiny_llava_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    llama_like = str(root / "llama-like")
    _train_llama_like(llama_like)
    return [
        {"name": "tiny", "dir": tiny_llava_path, "added": []},
        {"name": "tiny+image tokens", "dir": tiny_llava_path, "added": [list(g) for g in MM_TOKENS]},
        {"name": "tiny legacy=true", "dir": _variant(tiny_llava_path, str(root / "legacy"), legacy=True), "added": []},
        {"name": "tiny legacy unset", "dir": _variant(tiny_llava_path, str(root / "unset"), legacy=None), "added": []},
        {"name": "tiny add_eos_token", "dir": _variant(tiny_llava_path, str(root / "eos"), add_eos_token=True), "added": []},
        {"name": "llama-like", "dir": llama_like, "added": [list(g) for g in MM_TOKENS]},
    ]


@pytest.fixture(scope="module")
def reference(cases):
    prompts = corpus()
    return prompts, run_reference(REFERENCE_SCRIPT, {"cases": cases, "prompts": prompts,
                                                     "image_index": IMAGE_TOKEN_INDEX})


def _ours(case):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(case["dir"], use_fast=False)  # as llava.model.builder loads it
    for group in case["added"]:
        tok.add_tokens(group, special_tokens=True)
    return tok


def test_corpus_is_large_and_tricky():
    prompts = corpus()
    assert len(prompts) > 700
    assert sum(p.count("<image>") >= 2 for p in prompts) >= 5
    assert any("<image> ASSISTANT:" in p for p in prompts)


@pytest.mark.parametrize("name", ["tiny", "tiny+image tokens", "tiny legacy=true", "tiny legacy unset",
                                  "tiny add_eos_token", "llama-like"])
def test_prompt_ids_equal_the_slow_tokenizer(name, cases, reference):
    from llava.mm_utils import tokenizer_image_token

    prompts, ref = reference
    case = next(c for c in cases if c["name"] == name)
    tok = _ours(case)
    assert len(tok) == ref[name]["len"]
    mismatches = []
    for prompt, expected in zip(prompts, ref[name]["ids"]):
        got = tokenizer_image_token(prompt, tok, IMAGE_TOKEN_INDEX)
        if got != expected:
            mismatches.append((prompt, expected, got))
    assert not mismatches, f"{len(mismatches)}/{len(prompts)} prompts differ, first: {mismatches[:3]}"
    assert tokenizer_image_token(prompts[10], tok, IMAGE_TOKEN_INDEX, return_tensors="pt").tolist() == ref[name]["ids"][10]


def test_reference_legacy_flags(reference):
    """The variants really exercise both of 4.37's modes (an unnamed legacy means True there)."""
    _, ref = reference
    assert [ref[n]["legacy"] for n in ("tiny", "tiny legacy=true", "tiny legacy unset", "llama-like")] == \
        [False, True, True, False]


def test_plain_transformers5_chunks_would_differ(cases, reference):
    """The case the slow rules are for: a chunk after <image> that starts with a space. Here
    5.x's own tokenizer gives other ids than the original's."""
    prompts, ref = reference
    tok = _ours(cases[0])
    i = prompts.index("USER: <image> ASSISTANT:")
    chunks = [tok(c).input_ids for c in prompts[i].split("<image>")]
    naive = chunks[0] + [IMAGE_TOKEN_INDEX] + chunks[1][1:]
    assert naive != ref["tiny"]["ids"][i]
    assert len(ref["tiny"]["ids"][i]) == len(naive) + 1  # the lone word-start piece before "ASSISTANT"


def test_other_tokenizers_keep_their_own_behaviour(tmp_path):
    """A tokenizer that is not a sentencepiece LlamaTokenizer is called as before."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llava.mm_utils import slow_llama_rules, tokenizer_image_token

    vocab = {"<s>": 0, "<unk>": 1, "hello": 2, "world": 3, "Ġhello": 4, "Ġworld": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>")
    assert slow_llama_rules(tok) is None
    assert tokenizer_image_token("hello <image> world", tok) == tok("hello ").input_ids + [IMAGE_TOKEN_INDEX] + \
        tok(" world").input_ids
