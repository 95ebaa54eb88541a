"""Fine-tuning under pruning, in process and without DeepSpeed: the loss falls on four
repeated samples, gradients reach the projector (and LoRA) only through the kept visual
tokens, and the checkpoint reloads with its pruning setting and answers in the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from holov_patches import PruningConfig, list_pruners

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # whole scripts / models end to end

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURES = os.path.join(REPO, "playground", "fixtures", "train")
IMAGES = os.path.join(FIXTURES, "images")
METHOD = "holov" if "holov" in list_pruners() else "cls_topk"
KEEP = 16  # of 576 visual tokens
TRAINED = PruningConfig(method=METHOD, keep=KEEP)


def _argv(model, data, out, *extra):
    return ["--model_name_or_path", model, "--version", "v1", "--data_path", data, "--image_folder", IMAGES,
            "--output_dir", out, "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", "1", "--holov_tokens", str(KEEP), "--prune_method", METHOD, *extra]


@pytest.fixture(scope="module")
def four_samples(tmp_path_factory):
    samples = [s for s in json.load(open(os.path.join(FIXTURES, "conversations.json"))) if "image" in s][:4]
    assert len(samples) == 4
    path = tmp_path_factory.mktemp("data") / "four.json"
    path.write_text(json.dumps(samples))
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_llava_path, four_samples, tmp_path_factory):
    """20 full fine-tuning steps on the same 4 samples (batch 4, constant lr 5e-3), pruning on."""
    from llava.train.train import train

    out = str(tmp_path_factory.mktemp("ft") / "llava-v1.5-tiny-holov")
    train(_argv(tiny_llava_path, four_samples, out, "--max_steps", "20", "--per_device_train_batch_size", "4",
                "--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--seed", "0"))
    return out


def _batch(tokenizer, processor, data, n=None):
    from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset

    ds = LazySupervisedDataset(data, tokenizer, processor, "v1", image_folder=IMAGES, image_aspect_ratio="pad")
    return DataCollatorForSupervisedDataset(tokenizer)([ds[i] for i in range(n or len(ds))])


def test_loss_falls_on_repeated_samples(trained):
    history = json.load(open(os.path.join(trained, "trainer_state.json")))["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 20
    assert losses[0] > 5.0  # ~ln(512): a random tiny model
    assert losses[-1] < 0.5 * losses[0], losses


def test_checkpoint_reloads_with_its_pruning_and_what_it_learned(trained, tiny_llava_path, four_samples, monkeypatch):
    from llava.model.builder import load_pretrained_model

    monkeypatch.delenv("HOLOV_PRUNING", raising=False)
    assert json.load(open(os.path.join(trained, "config.json")))["holov"] == TRAINED.to_dict()
    tok, model, processor, _ = load_pretrained_model(trained, None, "llava-v1.5-tiny-holov", device="cpu")
    assert model.get_pruning() == TRAINED
    batch = _batch(tok, processor, four_samples)
    _, base, _, _ = load_pretrained_model(tiny_llava_path, None, "llava-v1.5-tiny", device="cpu", pruning=TRAINED)
    with torch.no_grad():
        tuned_loss = model(**batch).loss.item()
        base_loss = base(**batch).loss.item()
        assert [int((k >= 0).sum()) for k in model.last_pruning.kept_index] == [KEEP] * 4
    assert tuned_loss < 0.5 * base_loss, (tuned_loss, base_loss)


def test_cli_answers_with_the_saved_pruning(trained):
    env = {**os.environ, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1"}
    env.pop("HOLOV_PRUNING", None)
    proc = subprocess.run([sys.executable, "-m", "llava.serve.cli", "--model-path", trained, "--image-file",
                           os.path.join(IMAGES, "green_triangle.png"), "--device", "cpu", "--conv-mode", "vicuna_v1",
                           "--temperature", "0", "--max-new-tokens", "12"],
                          input="What is shown in the image?\n", capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"[holov] visual-token pruning: {TRAINED.describe()}" in proc.stdout
    answer = proc.stdout.split("ASSISTANT:", 1)[1].split("USER:", 1)[0].strip()
    assert answer, proc.stdout


def test_gradients_flow_through_kept_tokens_only(tiny_llava_path, tmp_path):
    """A projector-input hook: rows of pruned tokens get exactly zero gradient, kept rows
    non-zero; the projector and every LoRA B matrix get gradients, the tower none."""
    from llava.train.arguments import parse_args
    from llava.train.model_setup import build

    data = os.path.join(FIXTURES, "conversations.json")  # 4 image samples + 2 text-only
    args = parse_args(_argv(tiny_llava_path, data, str(tmp_path / "out"), "--lora_enable", "True", "--lora_r", "4",
                            "--lora_dropout", "0.0"))
    setup = build(*args)
    model = setup.model
    base = model.get_base_model()
    assert setup.save_mode == "lora" and base.get_pruning() == TRAINED
    batch = _batch(setup.tokenizer, setup.image_processor, data)
    has_image = ["image" in s for s in json.load(open(data))]

    captured = {}

    def grab_input(module, inputs):
        captured["x"] = inputs[0].detach().requires_grad_(True)  # [B, 576, C] tower features
        return (captured["x"],)

    handle = base.get_model().mm_projector.register_forward_pre_hook(grab_input)
    try:
        model(**batch).loss.backward()
    finally:
        handle.remove()
    grad = captured["x"].grad
    record = base.last_pruning
    assert grad.shape[:2] == (len(has_image), 576)
    for row, real in enumerate(has_image):
        nonzero = set(torch.nonzero(grad[row].abs().sum(-1)).flatten().tolist())
        if real:
            kept = record.kept_index[row]
            assert set(kept[kept >= 0].tolist()) == nonzero and len(nonzero) == KEEP
        else:
            assert not nonzero  # a text-only row's dummy image contributes nothing
    for p in base.get_model().mm_projector.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad is None for p in base.get_vision_tower().parameters())
    assert not any("vision_tower" in n for n, p in model.named_parameters() if "lora_" in n)


def test_projector_gets_its_own_learning_rate(tiny_llava_path, tmp_path):
    from llava.train.arguments import parse_args
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.model_setup import build

    model_args, data_args, training_args, pruning_args = parse_args(_argv(
        tiny_llava_path, os.path.join(FIXTURES, "conversations.json"), str(tmp_path / "o"),
        "--learning_rate", "2e-4", "--mm_projector_lr", "2e-5", "--weight_decay", "0.1"))
    setup = build(model_args, data_args, training_args, pruning_args)
    trainer = LLaVATrainer(model=setup.model, args=training_args, save_mode=setup.save_mode)
    optimizer = trainer.create_optimizer()
    projector = {id(p) for p in setup.model.get_model().mm_projector.parameters()}
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= projector or not ids & projector  # a group is all projector or none
        assert group["lr"] == (2e-5 if ids <= projector else 2e-4)
        seen |= ids
    trainable = {id(p) for p in setup.model.parameters() if p.requires_grad}
    assert seen == trainable and projector <= seen


@pytest.mark.parametrize("extra, match", [
    (["--mm_projector_type", "linear"], "contradicts the checkpoint"),
    (["--tune_mm_mlp_adapter", "True", "--lora_enable", "True"], "exclude each other"),
    (["--holov_tokens", "0"], "keep=0"),
])
def test_bad_training_flags_raise(tiny_llava_path, tmp_path, extra, match):
    from llava.train.arguments import parse_args
    from llava.train.model_setup import build

    argv = _argv(tiny_llava_path, os.path.join(FIXTURES, "conversations.json"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match=match):
        build(*parse_args(argv + extra))


@pytest.mark.parametrize("mode_flags, mode", [(["--tune_mm_mlp_adapter", "True"], "projector"),
                                              (["--lora_enable", "True", "--lora_r", "4"], "lora")])
def test_partial_checkpoints_save_and_resume(tiny_llava_path, tmp_path, mode_flags, mode):
    """The projector-only and LoRA layouts hold every trained weight and load back on resume."""
    from llava.train.arguments import parse_args
    from llava.train.llava_trainer import LLaVATrainer
    from llava.train.model_setup import build

    argv = _argv(tiny_llava_path, os.path.join(FIXTURES, "conversations.json"), str(tmp_path / "o"), *mode_flags)

    def trainer_for():
        model_args, data_args, training_args, pruning_args = parse_args(argv)
        setup = build(model_args, data_args, training_args, pruning_args)
        assert setup.save_mode == mode
        return LLaVATrainer(model=setup.model, args=training_args, save_mode=setup.save_mode)

    first = trainer_for()
    trained = {n: p for n, p in first.model.named_parameters() if p.requires_grad}
    assert any("mm_projector" in n for n in trained) and (mode == "projector") == all("mm_projector" in n for n in trained)
    with torch.no_grad():
        for p in trained.values():
            p.add_(torch.randn_like(p))  # as if trained
    ckpt = str(tmp_path / "checkpoint-1")
    first._save(ckpt)
    assert json.load(open(os.path.join(ckpt, "config.json")))["holov"] == TRAINED.to_dict()
    second = trainer_for()
    second._load_from_checkpoint(ckpt)
    state = dict(second.model.named_parameters())
    assert all(torch.equal(state[n], p) for n, p in trained.items())


def test_training_pruning_precedence_and_what_is_saved(monkeypatch):
    """flag > HOLOV_PRUNING > the start checkpoint's saved setting; the result is saved,
    and training without pruning from a pruned checkpoint saves an explicit 'none'."""
    from types import SimpleNamespace

    from llava.train.model_setup import training_pruning

    class Stub:
        def __init__(self, saved=None):
            self.config = SimpleNamespace(**({"holov": saved} if saved else {}))
            self.pruning = "unset"

        def set_pruning(self, cfg):
            self.pruning = cfg

    monkeypatch.delenv("HOLOV_PRUNING", raising=False)
    saved = PruningConfig(method="random", keep=32).to_dict()
    stub = Stub(saved)
    assert training_pruning(stub, TRAINED) == TRAINED and stub.pruning == TRAINED
    assert stub.config.holov == TRAINED.to_dict()
    stub = Stub(saved)
    assert training_pruning(stub, None) == PruningConfig.from_dict(saved) and stub.config.holov == saved
    monkeypatch.setenv("HOLOV_PRUNING", "method=cls_topk,keep=8")
    stub = Stub(saved)
    assert training_pruning(stub, None) == PruningConfig(method="cls_topk", keep=8)
    stub = Stub(saved)
    assert training_pruning(stub, PruningConfig(method="none")) is None and stub.pruning is None
    assert PruningConfig.from_dict(stub.config.holov).is_off
    stub = Stub()
    monkeypatch.delenv("HOLOV_PRUNING")
    assert training_pruning(stub, None) is None and not hasattr(stub.config, "holov")


def test_train_mem_picks_flash_attention_only_with_cuda_and_flash_attn(monkeypatch, caplog):
    import importlib.util
    import logging

    from llava.train import train_mem

    has_flash = importlib.util.find_spec("flash_attn") is not None
    monkeypatch.setattr(train_mem.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="llava.train.train_mem"):
        assert train_mem.choose_attn_implementation() == "sdpa"
    assert "training with SDPA" in caplog.text
    monkeypatch.setattr(train_mem.torch.cuda, "is_available", lambda: True)
    assert train_mem.choose_attn_implementation() == ("flash_attention_2" if has_flash else "sdpa")
    monkeypatch.setattr(train_mem.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert train_mem.choose_attn_implementation() == "flash_attention_2"
