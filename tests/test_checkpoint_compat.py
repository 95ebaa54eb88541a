"""Checkpoints we write load in the original LLaVA's library versions (transformers 4.37.2,
peft 0.8.2, in the side virtualenv of scripts/install_reference_venv.sh), and the loader
keeps the original's defaults.

One subprocess in the side venv loads, with 4.37's own classes and the original's loading
rules: the tiny builder's checkpoint (also one carrying its tower), its CLIP tower folder
and image processor, and the three layouts training saves (full, projector-only, LoRA).
Here the results are compared with what we saved / what our model computes."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from reference_venv import run_reference

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
IMAGES = os.path.join(REPO, "playground", "fixtures", "train", "images")
TOWER = "model.vision_tower.vision_tower."
PROJECTOR_KEYS = {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}  # mlp2x_gelu
PROMPTS = ["USER: <image>\nWhat is shown? ASSISTANT:", "<image> <image> What differs?", " leading", "a</s>USER: b"]

REFERENCE_SCRIPT = r'''
import os
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, LlamaConfig, LlamaForCausalLM,
                          LlamaTokenizer)

out_dir = payload["out"]
inputs = load_file(payload["inputs"])
torch.manual_seed(0)
result = {}

def info_of(info):
    return {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys")} | {
        "mismatched_keys": [str(x) for x in info["mismatched_keys"]]}

def dump(name, state):
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, os.path.join(out_dir, name + ".safetensors"))

def config_facts(path):
    cfg = LlamaConfig.from_pretrained(path)
    return {"torch_dtype": str(cfg.torch_dtype), "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling,
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "mm_hidden_size": getattr(cfg, "mm_hidden_size", None)}

def split_on_images(prompt, tok):  # the original's rule: chunks around <image>, -200 between, one BOS
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    skip = 1 if chunks[0][:1] == [tok.bos_token_id] else 0
    ids = list(chunks[0][:skip])
    for n, c in enumerate(chunks):
        ids += ([-200] if n else []) + c[skip:]
    return ids

# Language models (a full checkpoint loads as the LLaMA it extends; the multimodal keys are extra).
for name, path in payload["llms"].items():
    model, info = LlamaForCausalLM.from_pretrained(path, output_loading_info=True)
    model.eval()
    with torch.no_grad():
        dump(name + "-logits", {"logits": model(input_ids=inputs["input_ids"]).logits})
    dump(name, model.state_dict())
    result[name] = {"info": info_of(info), "config": config_facts(path)}
    if os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        tok = AutoTokenizer.from_pretrained(path, use_fast=False)
        result[name]["tokenizer"] = {"slow": type(tok) is LlamaTokenizer, "legacy": tok.legacy, "len": len(tok),
                                     "ids": [split_on_images(p, tok) for p in payload["prompts"]]}

# The CLIP tower folder, as the original's CLIPVisionTower loads it.
tower, info = CLIPVisionModel.from_pretrained(payload["tower"], output_loading_info=True)
tower.eval()
with torch.no_grad():
    hidden = tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2]
dump("tower", tower.state_dict())
dump("tower-features", {"hidden": hidden})
proc = CLIPImageProcessor.from_pretrained(payload["tower"])
from PIL import Image
pixels = proc.preprocess(Image.open(payload["image"]).convert("RGB"), return_tensors="pt")["pixel_values"]
dump("processor-pixels", {"pixel_values": pixels})
result["tower"] = {"info": info_of(info), "keys": sorted(tower.state_dict()),
                   "processor": {"size": proc.size, "crop_size": proc.crop_size, "mean": proc.image_mean,
                                 "std": proc.image_std}}

# Projector-only: mm_projector.bin into the original's mlp2x_gelu (Linear, GELU, Linear), keys
# after "mm_projector." as its pretrain-adapter loading does.
proj_dir = payload["projector"]
weights = torch.load(os.path.join(proj_dir, "mm_projector.bin"), map_location="cpu")
facts = config_facts(proj_dir)
projector = nn.Sequential(nn.Linear(facts["mm_hidden_size"], facts["hidden_size"]), nn.GELU(),
                          nn.Linear(facts["hidden_size"], facts["hidden_size"]))
missing, unexpected = projector.load_state_dict({k.split("mm_projector.")[1]: v for k, v in weights.items()}, strict=True)
dump("projector", projector.state_dict())
result["projector"] = {"keys": sorted(weights), "config": facts}

# LoRA, the original's way: the base with the LoRA folder's config, non_lora_trainables.bin
# (its "base_model." and then "model." cut off), then peft's adapter, merged.
from peft import PeftModel
lora_dir, base = payload["lora"], payload["lora_base"]
model = LlamaForCausalLM.from_pretrained(base, config=LlamaConfig.from_pretrained(lora_dir))
non_lora = torch.load(os.path.join(lora_dir, "non_lora_trainables.bin"), map_location="cpu")
non_lora = {(k[11:] if k.startswith("base_model.") else k): v for k, v in non_lora.items()}
if any(k.startswith("model.model.") for k in non_lora):
    non_lora = {(k[6:] if k.startswith("model.") else k): v for k, v in non_lora.items()}
load = model.load_state_dict(non_lora, strict=False)
model = PeftModel.from_pretrained(model, lora_dir).merge_and_unload()
dump("lora-merged", model.state_dict())
dump("lora-non-lora", non_lora)
result["lora"] = {"non_lora_unexpected": sorted(load.unexpected_keys), "config": config_facts(lora_dir)}

# Config dicts as we write them: what 4.37's LlamaConfig makes of each (or its refusal).
result["configs"] = []
for cfg in payload["configs"]:
    try:
        c = LlamaConfig.from_dict(cfg)
        result["configs"].append({"rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling,
                                  "torch_dtype": str(c.torch_dtype)})
    except Exception as err:  # noqa: BLE001
        result["configs"].append({"error": type(err).__name__})
answer(result)
'''

ROPE_CASES = [  # (5.x config, what 4.37 must read: rope_theta, rope_scaling); worked out by hand
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "dtype": "bfloat16"},
     (10000.0, None, "torch.bfloat16")),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "dtype": "float16"},
     (1000000.0, None, "torch.float16")),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}, "dtype": "float32"},
     (500000.0, {"type": "linear", "factor": 2.0}, "torch.float32")),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}},
     (10000.0, {"type": "dynamic", "factor": 4.0}, "None")),
]
# 4.37 has no yarn / llama3 rope: it must refuse the config rather than run without it.
REFUSED = [{"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                "original_max_position_embeddings": 2048}}]


def _argv(model, out, *extra):
    return ["--model_name_or_path", model, "--version", "v1", "--data_path", "unused.json", "--image_folder", IMAGES,
            "--output_dir", out, "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no", *extra]


def _trainer(argv):
    from llava.train.arguments import parse_args
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.model_setup import build

    model_args, data_args, training_args, pruning_args = parse_args(argv)
    setup = build(model_args, data_args, training_args, pruning_args)
    return LLaVATrainer(model=setup.model, args=training_args, processing_class=setup.tokenizer,
                        save_mode=setup.save_mode)


def _perturbed(trainer):
    """Trained weights that differ from the start model's (as if trained)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.fixture(scope="module")
def saved(tiny_llava_path, tmp_path_factory):
    from llava.model.tiny import build_tiny_llava

    root = tmp_path_factory.mktemp("compat")
    out = {"base": tiny_llava_path, "with_tower": build_tiny_llava(str(root / "with-tower"), with_tower_weights=True)}
    for mode, flags in (("full", []), ("projector", ["--tune_mm_mlp_adapter", "True"]),
                        ("lora", ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"])):
        trainer = _trainer(_argv(tiny_llava_path, str(root / f"run-{mode}"), *flags))
        assert trainer.save_mode == mode
        _perturbed(trainer)
        path = str(root / f"saved-{mode}")
        trainer._save(path)
        out[mode] = path
        out[mode + "-state"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return out


@pytest.fixture(scope="module")
def reference(saved, tmp_path_factory):
    from safetensors.torch import save_file

    from llava.model.checkpoint_compat import config_for_transformers4

    work = tmp_path_factory.mktemp("reference")
    torch.manual_seed(0)
    inputs = {"input_ids": torch.randint(3, 500, (2, 24)), "pixel_values": torch.randn(1, 3, 336, 336)}
    save_file(inputs, str(work / "inputs.safetensors"))
    configs = [config_for_transformers4(c) for c, _ in ROPE_CASES] + [config_for_transformers4(c) for c in REFUSED]
    payload = {"out": str(work), "inputs": str(work / "inputs.safetensors"), "prompts": PROMPTS, "configs": configs,
               "llms": {"tiny": saved["base"], "with_tower": saved["with_tower"], "full": saved["full"]},
               "tower": os.path.join(saved["base"], "clip-vit-tiny-patch14-336"),
               "image": os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0]),
               "projector": saved["projector"], "lora": saved["lora"], "lora_base": saved["base"]}
    result = run_reference(REFERENCE_SCRIPT, payload)
    return result, inputs, work


def _load(work, name):
    from safetensors.torch import load_file

    return load_file(str(work / f"{name}.safetensors"))


def _ours(path, base=None):
    from llava.model.builder import load_pretrained_model

    env = os.environ.pop("HOLOV_PRUNING", None)
    try:
        return load_pretrained_model(path, base, os.path.basename(path) + "-llava", device="cpu")
    finally:
        if env is not None:
            os.environ["HOLOV_PRUNING"] = env


def _is_mm(key):
    return key.startswith(TOWER) or key.startswith("model.mm_projector.")


pytestmark = pytest.mark.subprocess


@pytest.mark.parametrize("name", ["tiny", "with_tower", "full"])
def test_llm_part_loads_in_transformers_4_37(name, saved, reference):
    result, inputs, work = reference
    info = result[name]["info"]
    assert info["missing_keys"] == [] and info["mismatched_keys"] == []
    assert all(_is_mm(k) for k in info["unexpected_keys"]), info["unexpected_keys"]
    assert PROJECTOR_KEYS <= set(info["unexpected_keys"])
    assert result[name]["config"]["torch_dtype"] == "torch.float32"
    assert result[name]["config"]["rope_theta"] == 10000.0 and result[name]["config"]["rope_scaling"] is None

    theirs = _load(work, name)
    path = {"tiny": saved["base"], "with_tower": saved["with_tower"], "full": saved["full"]}[name]
    _, model, _, _ = _ours(path)
    ours = {k: v for k, v in model.state_dict().items() if not _is_mm(k)}
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours), [k for k in ours if not torch.equal(theirs[k], ours[k])]
    if name == "full":  # what training saved is what it trained, not the start model
        trained = saved["full-state"]
        assert all(torch.equal(theirs[k], trained[k]) for k in ours)
        assert not torch.equal(theirs["model.embed_tokens.weight"], _load(work, "tiny")["model.embed_tokens.weight"])
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"]).logits
    torch.testing.assert_close(logits, _load(work, name + "-logits")["logits"], rtol=1e-5, atol=1e-5)


def test_tower_inside_a_checkpoint_has_the_4x_key_names(saved, reference):
    """As the original names them: model.vision_tower.vision_tower + 4.37 CLIPVisionModel's keys."""
    result, _, work = reference
    tower_keys = {k[len(TOWER):] for k in result["with_tower"]["info"]["unexpected_keys"] if k.startswith(TOWER)}
    assert tower_keys == set(result["tower"]["keys"]) - {"vision_model.embeddings.position_ids"}
    # ... and our loader still reads them back into the tower.
    _, model, _, _ = _ours(saved["with_tower"])
    from safetensors.torch import load_file

    stored = load_file(os.path.join(saved["with_tower"], "model.safetensors"))
    core = model.get_vision_tower().vision_tower
    core = getattr(core, "vision_model", core)
    weight = core.embeddings.patch_embedding.weight
    assert torch.equal(weight, stored[TOWER + "vision_model.embeddings.patch_embedding.weight"])


def test_tower_folder_loads_in_transformers_4_37(saved, reference):
    from transformers import CLIPVisionModel

    result, inputs, work = reference
    assert result["tower"]["info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    tower_dir = os.path.join(saved["base"], "clip-vit-tiny-patch14-336")
    ours, info = CLIPVisionModel.from_pretrained(tower_dir, output_loading_info=True)  # 5.x reads the 4.x names too
    assert not info["missing_keys"] and not info["unexpected_keys"]
    theirs = _load(work, "tower")
    mine = {("vision_model." + k if not k.startswith("vision_model.") else k): v for k, v in ours.state_dict().items()}
    assert set(theirs) - {"vision_model.embeddings.position_ids"} <= set(mine)
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs if k in mine)
    # The features LLaVA takes (hidden_states[-2]) are the same.
    _, model, processor, _ = _ours(saved["base"])
    with torch.no_grad():
        hidden = model.get_vision_tower().vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(hidden, _load(work, "tower-features")["hidden"], rtol=1e-5, atol=1e-5)
    # The image processor reads the same settings and gives the same pixels.
    from PIL import Image

    facts = result["tower"]["processor"]
    assert facts["size"] == {"shortest_edge": 336} and facts["crop_size"] == {"height": 336, "width": 336}
    assert facts["mean"] == list(processor.image_mean) and facts["std"] == list(processor.image_std)
    image = Image.open(os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0])).convert("RGB")
    pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, _load(work, "processor-pixels")["pixel_values"], rtol=0, atol=1e-5)


def test_full_save_tokenizer_is_the_slow_one_with_the_same_ids(saved, reference):
    from transformers import AutoTokenizer

    from llava.mm_utils import tokenizer_image_token

    result, _, _ = reference
    facts = result["full"]["tokenizer"]
    assert facts["slow"] and facts["legacy"] is False
    assert os.path.isfile(os.path.join(saved["full"], "tokenizer.model"))
    for source in (saved["full"], saved["base"]):
        tok = AutoTokenizer.from_pretrained(source, use_fast=False)
        assert len(tok) == facts["len"]
        assert [tokenizer_image_token(p, tok) for p in PROMPTS] == facts["ids"]


def test_projector_only_checkpoint_loads_in_the_original_projector(saved, reference):
    result, _, work = reference
    assert set(result["projector"]["keys"]) == PROJECTOR_KEYS
    facts = result["projector"]["config"]
    assert (facts["hidden_size"], facts["mm_hidden_size"], facts["torch_dtype"]) == (64, 64, "torch.float32")
    theirs = _load(work, "projector")
    trained = saved["projector-state"]
    assert all(torch.equal(theirs[k], trained["model.mm_projector." + k]) for k in theirs)


def test_lora_checkpoint_loads_with_peft_0_8(saved, reference):
    result, _, work = reference
    dropped_ok = json.load(open(os.path.join(saved["lora"], "adapter_config.json")))
    assert "use_dora" not in dropped_ok and "peft_version" not in dropped_ok and dropped_ok["r"] == 4
    assert all(k.startswith("model.mm_projector.") for k in result["lora"]["non_lora_unexpected"])
    assert set(result["lora"]["non_lora_unexpected"]) == PROJECTOR_KEYS  # 4.37 Llama has no projector
    theirs = _load(work, "lora-merged")
    _, model, _, _ = _ours(saved["lora"], saved["base"])
    ours = {k: v for k, v in model.state_dict().items() if not _is_mm(k)}
    assert set(theirs) == set(ours)
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], rtol=1e-6, atol=1e-6)
    base = _load(work, "tiny")
    assert any(not torch.equal(theirs[k], base[k]) for k in theirs)  # the adapter was applied
    non_lora = _load(work, "lora-non-lora")
    assert all(torch.equal(non_lora[k], model.state_dict()[k]) for k in PROJECTOR_KEYS)


def test_rope_and_dtype_fields_as_4_37_reads_them(reference):
    result, _, _ = reference
    for (_, expected), got in zip(ROPE_CASES, result["configs"]):
        assert (got["rope_theta"], got["rope_scaling"], got["torch_dtype"]) == expected
    assert [c.get("error") for c in result["configs"][len(ROPE_CASES):]] == ["ValueError"]


def test_converted_config_reads_back_the_same_in_transformers_5():
    from transformers import LlamaConfig

    from llava.model.checkpoint_compat import config_for_transformers4

    def rope(cfg):  # 5.x keeps 4.x's "type" beside "rope_type" when it reads both spellings
        return {k: v for k, v in LlamaConfig.from_dict(cfg).rope_parameters.items() if k != "type"}

    for cfg, _ in ROPE_CASES:
        base = {"hidden_size": 64, "num_attention_heads": 4, **cfg}
        converted = config_for_transformers4(base)
        assert rope(converted) == rope(base)
        assert LlamaConfig.from_dict(converted).dtype == LlamaConfig.from_dict(base).dtype
    assert "rope_scaling" not in config_for_transformers4(ROPE_CASES[0][0])  # 5.x warns about the key


# ------------------------------------------------------------------ the loader's defaults
def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_config(path, **changes):
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    json.dump(cfg, open(cfg_path, "w"), indent=2)


def test_config_without_mm_use_im_patch_token_counts_as_true(tiny_llava_path, tmp_path):
    """The original reads a missing mm_use_im_patch_token as True: <im_patch> is added and
    the embeddings grow to the tokenizer."""
    path = _copy(tiny_llava_path, tmp_path / "no-flag")
    _edit_config(path, mm_use_im_patch_token=None)
    tok, model, _, _ = _ours(path)
    assert "<im_patch>" in tok.get_vocab() and len(tok) == 513
    assert model.get_input_embeddings().weight.shape[0] == 513 == model.get_output_embeddings().weight.shape[0]
    tok, model, _, _ = _ours(tiny_llava_path)  # an explicit False adds nothing
    assert "<im_patch>" not in tok.get_vocab() and model.get_input_embeddings().weight.shape[0] == 512


def test_padded_embeddings_are_cut_to_the_tokenizer(tiny_llava_path, tmp_path):
    """Embedding rows beyond len(tokenizer) (a padded vocabulary) are dropped, as the
    original's unconditional resize_token_embeddings(len(tokenizer)) does."""
    from safetensors.torch import load_file, save_file

    path = _copy(tiny_llava_path, tmp_path / "padded")
    weights = load_file(os.path.join(path, "model.safetensors"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[key] = torch.cat([weights[key], torch.randn(8, weights[key].shape[1])])
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    _edit_config(path, vocab_size=520)
    tok, model, _, _ = _ours(path)
    assert len(tok) == 512
    assert model.get_input_embeddings().weight.shape[0] == 512 == model.get_output_embeddings().weight.shape[0]
    assert model.config.vocab_size == 512
    assert torch.equal(model.get_input_embeddings().weight, weights["model.embed_tokens.weight"][:512])
