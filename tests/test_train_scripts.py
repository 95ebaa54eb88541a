"""The scripts/v1_5 training scripts in their CPU smoke mode (SMOKE=1), pruning on:
full fine-tune with DeepSpeed ZeRO-2 and without DeepSpeed, LoRA with ZeRO-3, and
projector pretraining from a plain LLaMA; each checkpoint reloads through
load_pretrained_model with its pruning setting.

The first DeepSpeed run on a machine JIT-builds DeepSpeed's shm op (~1 min, g++ and ninja);
later runs reuse it from ~/.cache/torch_extensions."""
from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import torch

from holov_patches import PruningConfig, list_pruners

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # whole scripts / models end to end

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
METHOD = "holov" if "holov" in list_pruners() else "cls_topk"
KEEP = 16
TRAINED = PruningConfig(method=METHOD, keep=KEEP)


def run_script(name: str, out: str, timeout: int = 400, **env_vars) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOKE": "1", "TOKENS": str(KEEP), "METHOD": METHOD, "OUTPUT_DIR": out, "MAX_STEPS": "2",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env_vars}
    env.pop("HOLOV_PRUNING", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "v1_5", name)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"[holov] training with visual-token pruning: {TRAINED.describe()}" in proc.stdout
    losses = [h["loss"] for h in json.load(open(os.path.join(out, "trainer_state.json")))["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses), losses
    assert json.load(open(os.path.join(out, "config.json")))["holov"] == TRAINED.to_dict()
    return proc


def _load(path, base=None):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(path, base, os.path.basename(path), device="cpu")


@pytest.fixture(autouse=True)
def _no_env_pruning(monkeypatch):
    monkeypatch.delenv("HOLOV_PRUNING", raising=False)


@pytest.mark.parametrize("deepspeed", ["zero2.json", "none"])
def test_finetune_script(tiny_llava_path, tmp_path, deepspeed):
    out = str(tmp_path / f"llava-v1.5-tiny-{deepspeed}")
    config = os.path.join(REPO, "scripts", deepspeed) if deepspeed != "none" else "none"
    run_script("finetune_holov.sh", out, MODEL=tiny_llava_path, DEEPSPEED=config)
    args = torch.load(os.path.join(out, "training_args.bin"), weights_only=False)
    assert args.use_cpu and (args.deepspeed == config if deepspeed != "none" else args.deepspeed is None)
    _, model, _, _ = _load(out)
    assert model.get_pruning() == TRAINED


def test_lora_script_zero3(tiny_llava_path, tmp_path):
    out = str(tmp_path / "llava-v1.5-tiny-lora")
    run_script("finetune_lora_holov.sh", out, MODEL=tiny_llava_path)  # the script's default: scripts/zero3.json
    args = torch.load(os.path.join(out, "training_args.bin"), weights_only=False)
    assert args.deepspeed.endswith("zero3.json")
    assert {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin"} <= set(os.listdir(out))
    non_lora = torch.load(os.path.join(out, "non_lora_trainables.bin"), weights_only=True)
    assert non_lora and all("mm_projector" in k for k in non_lora)
    _, merged, _, _ = _load(out, base=tiny_llava_path)
    assert merged.get_pruning() == TRAINED
    _, base, _, _ = _load(tiny_llava_path)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], base.state_dict()[name])  # the LoRA delta is merged in
    for key, value in non_lora.items():
        assert torch.equal(merged.state_dict()[key.split("base_model.model.", 1)[1]], value)


@pytest.fixture(scope="module")
def plain_llama(tmp_path_factory):
    from llava.train.smoke import build_plain_llama

    return build_plain_llama(str(tmp_path_factory.mktemp("llama") / "llama-tiny"))


def test_pretrain_script_from_plain_llama(plain_llama, tiny_llava_path, tmp_path):
    from llava.model.tiny import TOWER_DIR

    out = str(tmp_path / "llava-v1.5-tiny-pretrain")
    run_script("pretrain.sh", out, MODEL=plain_llama, VISION_TOWER=os.path.join(tiny_llava_path, TOWER_DIR), DEEPSPEED="none")
    assert sorted(os.listdir(out)) == ["config.json", "mm_projector.bin", "trainer_state.json"]
    weights = torch.load(os.path.join(out, "mm_projector.bin"), weights_only=True)
    assert sorted(weights) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                               "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    _, model, _, _ = _load(out, base=plain_llama)
    assert model.get_pruning() == TRAINED
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
