"""Write a complete tiny LLaVA checkpoint with random weights, in the original on-disk format.

    python -m llava.model.tiny OUT_DIR [--hidden 64 --layers 2 ...]

OUT_DIR gets what a ``liuhaotian/llava-v1.5-7b``-style checkpoint has: ``config.json``
(``architectures: [LlavaLlamaForCausalLM]``, ``model_type: llava``, ``mm_vision_tower``,
``mm_projector_type: mlp2x_gelu``, ``mm_vision_select_layer: -2``,
``image_aspect_ratio: pad``), the LLaMA + projector weights, a SentencePiece LLaMA
tokenizer trained offline, and a tiny CLIP-336/14 (576 patches) with its
``preprocessor_config.json`` in a folder that ``mm_vision_tower`` names relative to the
checkpoint. With ``text_tower=True`` (``--text-tower``) that folder is, like
``openai/clip-vit-large-patch14-336``, a whole ``CLIPModel`` (vision and text towers, both
projections, a CLIP BPE tokenizer built offline from a tiny vocabulary):
``CLIPVisionModel.from_pretrained`` still reads the same vision weights, and CDPruner finds
the text side. Without it the folder holds the vision tower only (transformers then loads it
without a report of unused text weights). The files are also loadable by the original LLaVA code at transformers 4.37
(see ``llava.model.checkpoint_compat``). Nothing is downloaded; it takes about a second. The
model answers gibberish.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from typing import Iterable, List

import torch

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TOWER_DIR = "clip-vit-tiny-patch14-336"

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "USER: What is shown in the image? ASSISTANT: The image shows a red square on a white background.",
    "Answer the question using a single word or phrase. Is there a cat in the image? Yes No",
    "Answer with the option's letter from the given choices directly. A. B. C. D.",
    "What color is the circle? Blue green yellow black white orange purple pink gray brown.",
    "How many objects are there? one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
    "Describe this image in detail. There is a large triangle, a small circle and a square.",
    "Human: Hello! Assistant: Hi, how can I help you today? [INST] <<SYS>> <</SYS>> [/INST]",
    "Please answer yes or no. The quick brown fox jumps over the lazy dog.",
]


def train_tokenizer(out_dir: str, vocab_size: int = 512, extra_text: Iterable[str] = ()) -> None:
    """A byte-fallback BPE SentencePiece model like LLaMA's (unk=0, bos=1, eos=2), trained in memory."""
    import sentencepiece as spm

    corpus: List[str] = list(_CORPUS) + list(extra_text)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2,
    )
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
        "model_max_length": 2048, "padding_side": "right", "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, f, indent=2)


CLIP_PROJECTION_DIM = 32  # the tiny CLIP's joint space (E), unlike any tower width on purpose
CLIP_TEXT_POSITIONS = 77  # CLIP's text context, as the released towers


def clip_bpe_vocab() -> tuple:
    """(vocab, merges) of a tiny CLIP BPE tokenizer: CLIP's 256 byte symbols, each also with
    the end-of-word mark ``</w>``, a few merges, then ``<|startoftext|>`` and ``<|endoftext|>``
    last (as in CLIP, the end token has the largest id)."""
    # GPT-2 / CLIP byte-level BPE: printable bytes stand for themselves, the others for 256 + k
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("\xa1"), ord("\xac") + 1)) \
        | set(range(ord("\xae"), ord("\xff") + 1))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    vocab_list = symbols + [c + "</w>" for c in symbols]
    merges = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("a", "n"), ("o", "r"), ("e", "r</w>"), ("i", "s</w>"),
              ("o", "n</w>"), ("w", "h"), ("a", "t</w>")]
    vocab_list += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, [" ".join(m) for m in merges]


def write_clip_tokenizer(out_dir: str) -> int:
    """CLIP's tokenizer files (vocab.json, merges.txt, tokenizer.json ...) for the tiny
    vocabulary; returns the vocabulary size."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab()
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                  model_max_length=CLIP_TEXT_POSITIONS).save_pretrained(out_dir)
    return len(vocab)


def write_tower(out_dir: str, hidden: int, layers: int, heads: int, image_size: int = 336, patch_size: int = 14,
                text_tower: bool = False) -> None:
    """The tiny tower folder: a whole CLIPModel (``text_tower``) or a CLIPVisionModel only.
    The vision weights are the same either way (drawn first, from the same random stream)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, CLIPVisionModel

    from llava.model.checkpoint_compat import make_tower_compatible, write_config_for_transformers4
    from llava.model.multimodal_encoder.clip_encoder import image_processor_class

    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                           projection_dim=CLIP_PROJECTION_DIM if text_tower else hidden)
    vision = CLIPVisionModel(cfg)
    if not text_tower:
        vision.save_pretrained(out_dir)
        make_tower_compatible(out_dir)  # vision_model.* keys, as 4.x (and the original LLaVA) expect
    else:
        os.makedirs(out_dir, exist_ok=True)
        vocab_size = write_clip_tokenizer(out_dir)
        with torch.random.fork_rng():  # the text side draws from its own stream: the LLaVA weights stay as before
            torch.manual_seed(1)
            # eos_token_id=2 as the released OpenAI configs: the pooled row is the argmax id (the end token)
            text_cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      max_position_embeddings=CLIP_TEXT_POSITIONS, projection_dim=CLIP_PROJECTION_DIM,
                                      bos_token_id=vocab_size - 2, eos_token_id=2, pad_token_id=1)
            clip = CLIPModel(CLIPConfig(text_config=text_cfg.to_dict(), vision_config=cfg.to_dict(),
                                        projection_dim=CLIP_PROJECTION_DIM))
        clip.vision_model.load_state_dict(vision.state_dict())
        clip.save_pretrained(out_dir)
        write_config_for_transformers4(out_dir)  # CLIPModel keys already read vision_model.* / text_model.*
    image_processor_class()(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD, do_center_crop=True, do_resize=True,
                       do_normalize=True, do_convert_rgb=True).save_pretrained(out_dir)


def build_tiny_llava(out_dir: str, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int | None = None,
                     vision_hidden: int = 64, vision_layers: int = 2, vision_heads: int = 4, vocab_size: int = 512,
                     arch: str = "llava-1.5", with_tower_weights: bool = False, seed: int = 0, force: bool = False,
                     backbone: str = "llama", text_tower: bool = False) -> str:
    """Write the checkpoint and return ``out_dir``; an existing complete one is kept unless ``force``.
    ``text_tower``: the tower folder is a whole CLIPModel with a CLIP tokenizer (for CDPruner)."""
    from llava.model.checkpoint_compat import make_checkpoint_compatible
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.language_model.llava_mistral import LlavaMistralConfig, LlavaMistralForCausalLM

    if arch not in ("llava-1.5", "llava-1.6"):
        raise ValueError(f"arch={arch!r} is not one of ('llava-1.5', 'llava-1.6')")
    backbones = {"llama": (LlavaConfig, LlavaLlamaForCausalLM), "mistral": (LlavaMistralConfig, LlavaMistralForCausalLM)}
    if backbone not in backbones:
        raise ValueError(f"backbone={backbone!r} is not one of {tuple(backbones)}")
    config_cls, model_cls = backbones[backbone]
    if os.path.isfile(os.path.join(out_dir, "config.json")) and not force:
        return out_dir
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    torch.manual_seed(seed)
    train_tokenizer(out_dir, vocab_size=vocab_size)
    write_tower(os.path.join(out_dir, TOWER_DIR), vision_hidden, vision_layers, vision_heads, text_tower=text_tower)

    mm = dict(mm_vision_tower=TOWER_DIR, mm_hidden_size=vision_hidden, mm_projector_type="mlp2x_gelu",
              mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_use_im_start_end=False,
              mm_use_im_patch_token=False, image_aspect_ratio="pad", mm_patch_merge_type="flat",
              tokenizer_padding_side="right", tokenizer_model_max_length=2048, use_mm_proj=True,
              freeze_mm_mlp_adapter=False, tune_mm_mlp_adapter=False)
    if arch == "llava-1.6":
        mm.update(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
                  image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
    config = config_cls(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False, **mm)
    config._name_or_path = out_dir  # lets the tower path resolve relative to the checkpoint
    model = model_cls(config)
    if "unpad" in mm["mm_patch_merge_type"]:
        torch.nn.init.normal_(model.get_model().image_newline, std=hidden ** -0.5)
    if with_tower_weights:
        model.get_vision_tower().load_model()
    model.save_pretrained(out_dir)
    if backbone == "llama":
        to_original_config(os.path.join(out_dir, "config.json"))
    make_checkpoint_compatible(out_dir)  # loadable by the original LLaVA code at transformers 4.37
    return out_dir


def to_original_config(path: str) -> None:
    """The released LLaVA-1.5 checkpoints say ``model_type: llava``; write it that way."""
    with open(path) as f:
        cfg = json.load(f)
    cfg["model_type"] = "llava"
    cfg["architectures"] = ["LlavaLlamaForCausalLM"]
    cfg.pop("_name_or_path", None)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--hidden", type=int, default=64, help="LLM hidden size")
    p.add_argument("--layers", type=int, default=2, help="LLM layers")
    p.add_argument("--heads", type=int, default=4, help="LLM attention heads")
    p.add_argument("--intermediate", type=int, default=None, help="LLM MLP size (default 4 x hidden)")
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--vision-heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--arch", default="llava-1.5", choices=("llava-1.5", "llava-1.6"))
    p.add_argument("--backbone", default="llama", choices=("llama", "mistral"), help="language model family")
    p.add_argument("--with-tower-weights", action="store_true", help="also store the tower weights inside the checkpoint")
    p.add_argument("--text-tower", action="store_true",
                   help="write the tower folder as a whole CLIPModel (text tower, projections, CLIP tokenizer), for cdpruner")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    a = p.parse_args(argv)
    out = build_tiny_llava(a.out_dir, a.hidden, a.layers, a.heads, a.intermediate, a.vision_hidden, a.vision_layers,
                           a.vision_heads, a.vocab_size, a.arch, a.with_tower_weights, a.seed, a.force,
                           a.backbone, a.text_tower)
    print(f"tiny LLaVA checkpoint ({a.arch}, {a.backbone}, random weights) written to {out}")


if __name__ == "__main__":
    main()
