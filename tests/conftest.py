"""Shared fixtures: tiny random checkpoints built once per test session (no downloads)."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory) -> str:
    """A tiny LLaVA-1.5 checkpoint in the original on-disk format (tower weights outside it)."""
    from llava.model.tiny import build_tiny_llava

    return build_tiny_llava(str(tmp_path_factory.mktemp("ckpt") / "llava-v1.5-tiny"))


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_path):
    """(tokenizer, model, image_processor, context_len) loaded on CPU with pruning off."""
    from llava.model.builder import load_pretrained_model

    env = os.environ.pop("HOLOV_PRUNING", None)
    try:
        return load_pretrained_model(tiny_llava_path, None, "llava-v1.5-tiny", device="cpu")
    finally:
        if env is not None:
            os.environ["HOLOV_PRUNING"] = env


@pytest.fixture(scope="session")
def tiny_next_llava(tmp_path_factory):
    """(tokenizer, model, image_processor) of a tiny LLaVA-NeXT (anyres) checkpoint on CPU."""
    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import build_tiny_llava

    path = build_tiny_llava(str(tmp_path_factory.mktemp("next") / "llava-v1.6-tiny"), arch="llava-1.6")
    tok, model, proc, _ = load_pretrained_model(path, None, "llava-v1.6-tiny", device="cpu")
    return tok, model, proc


@pytest.fixture()
def make_image(tmp_path):
    """Write a small RGB (or other mode) PNG/JPEG and return its path."""
    from PIL import Image

    def _make(name="img.png", size=(64, 48), color=(200, 30, 30), mode="RGB"):
        path = tmp_path / name
        img = Image.new("RGB", size, color)
        if mode != "RGB":
            img = img.convert(mode)
        img.save(path)
        return str(path)

    return _make


@pytest.fixture(scope="module")
def eval_fixtures(tmp_path_factory):
    """A fresh copy (per test module) of the synthetic benchmarks, written by
    playground/fixtures/make_fixtures.py."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "playground" / "fixtures" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("eval_fixtures")
    module.main(["--out", str(out)])
    return out
