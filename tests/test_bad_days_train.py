"""Bad days for training (issue 12, items 6, 9 and 15): samples that truncation leaves
without a supervised token are counted (all of them: an error before training), the data
json is checked up front with one error naming the file and the samples, and resuming is
explicit and cannot run code from a checkpoint."""
from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "playground/fixtures/train"
IMAGES = FIXTURES / "images"
KEEP = 16


def _argv(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--version", "v1", "--data_path", str(data), "--image_folder", str(IMAGES),
            "--output_dir", str(out), "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", "1", "--holov_tokens", str(KEEP), "--prune_method", "cls_topk", "--max_steps", "2",
            "--per_device_train_batch_size", "2", *extra]


def _samples():
    return json.loads((FIXTURES / "conversations.json").read_text())


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if the model gets built: these errors must come first."""
    import llava.train.train as train_module

    monkeypatch.setattr(train_module, "build", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.fixture(scope="module")
def parts(tiny_llava_path):
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava.model.tiny import TOWER_DIR

    return AutoTokenizer.from_pretrained(tiny_llava_path), CLIPImageProcessor.from_pretrained(os.path.join(tiny_llava_path, TOWER_DIR))


# ---------------------------------------------------------------- item 6: truncated supervision
def test_every_sample_over_max_length_is_an_error_before_training(tiny_llava_path, tmp_path):
    """Used to train to loss 0 / grad_norm 0 and exit 0."""
    from llava.train.train import train

    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        train(_argv(tiny_llava_path, FIXTURES / "conversations.json", out, "--model_max_length", "16"))
    message = str(err.value)
    assert "all 6 samples" in message and "--model_max_length 16" in message and "loss 0" in message
    assert not (out / "trainer_state.json").exists()


def test_image_tokens_count_towards_the_limit(parts, tiny_llava_path):
    """The model truncates again after splicing in the image's tokens: a first answer at
    text position 61 sits at 61 + (K - 1) once K visual tokens replace <image>."""
    from llava.constants import IGNORE_INDEX
    from llava.model.builder import load_pretrained_model
    from holov_patches import PruningConfig
    from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, visual_tokens_per_image

    tokenizer, processor = parts
    image_only = [s for s in _samples() if "image" in s]
    ds = LazySupervisedDataset(str(FIXTURES / "conversations.json"), tokenizer, processor, "v1",
                               image_folder=str(IMAGES), image_aspect_ratio="pad", samples=image_only)
    text_first = [int((ds[i]["labels"] != IGNORE_INDEX).nonzero()[0]) for i in range(len(ds))]
    assert ds.first_answer_positions() == text_first
    _, model, _, _ = load_pretrained_model(tiny_llava_path, None, "llava-v1.5-tiny", device="cpu",
                                           pruning=PruningConfig(method="cls_topk", keep=KEEP))
    assert visual_tokens_per_image(model) == KEEP
    limit = max(text_first) + 1  # every first answer fits as text, none once the image is spliced in
    with pytest.raises(ValueError, match=f"all {len(image_only)} samples"):
        LazySupervisedDataset("data.json", tokenizer, processor, "v1", image_folder=str(IMAGES), image_aspect_ratio="pad",
                              samples=image_only, max_length=limit, image_seq_len=KEEP)
    # and that is what the model really does: no label survives its truncation
    ds.max_length = limit
    batch = DataCollatorForSupervisedDataset(tokenizer, max_length=limit)([ds[i] for i in range(len(ds))])
    model.config.tokenizer_model_max_length = limit
    out = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, batch["attention_mask"], None,
                                                     batch["labels"], batch["images"].to(model.dtype), batch["image_sizes"])
    assert (out[5] == IGNORE_INDEX).all()


def test_some_samples_over_max_length_are_a_warning_naming_the_count(parts, caplog):
    from llava.train.data import LazySupervisedDataset

    tokenizer, processor = parts
    samples = _samples()
    long = dict(samples[0], id="long-one")
    long["conversations"] = [{"from": "human", "value": "<image>\n" + "many words here " * 40},
                             {"from": "gpt", "value": "An answer."}]
    samples.append(long)
    with caplog.at_level(logging.WARNING, logger="llava.train.data"):
        ds = LazySupervisedDataset("data.json", tokenizer, processor, "v1", image_folder=str(IMAGES),
                                   image_aspect_ratio="pad", samples=samples, max_length=100, image_seq_len=KEEP)
    assert ds.unsupervised == [len(samples) - 1]
    assert "1 of 7 samples of data.json lose every supervised token to --model_max_length 100" in caplog.text
    assert "long-one" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llava.train.data"):
        LazySupervisedDataset("data.json", tokenizer, processor, "v1", image_folder=str(IMAGES),
                              image_aspect_ratio="pad", samples=samples[:-1], max_length=100, image_seq_len=KEEP)
    assert "supervised" not in caplog.text


# ---------------------------------------------------------------- item 15: the data json
@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"[{\"id\": 1,", "is not valid JSON: Expecting"),
    (b"{\"id\": 1}", "must hold a json list of samples, not a dict"),
    (b"[]", "holds an empty list"),
    (b"[\xff]", "is not UTF-8 text (byte 0xff at offset 1)"),
])
def test_unreadable_data_json_names_the_file(content, message, tmp_path, no_model):
    from llava.train.train import train

    data = tmp_path / "data.json"
    data.write_bytes(content)
    with pytest.raises(ValueError) as err:
        train(_argv("unused", data, tmp_path / "out"))
    assert f"--data_path {data} " in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("bad, message", [
    ({"id": "a", "conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]},
     "turn 0 has a int 'value' (5); it must be a string"),
    ({"id": "a", "conversations": []}, "has an empty 'conversations' list"),
    ({"id": "a", "image": "gone.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                        {"from": "gpt", "value": "x"}]},
     "has image 'gone.png', which is not a file under --image_folder"),
    ({"id": "a", "image": None, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]},
     "has 'image': null; it must be a non-empty file name"),
    ({"id": "a", "conversations": [{"from": "human", "value": "q"}]}, "has no assistant answer"),
    ({"id": "a", "conversations": [{"from": "gpt", "value": "q"}, {"from": "gpt", "value": "x"}]},
     "must alternate user/assistant"),
    ({"id": "a"}, "has no 'conversations' list"),
    (["not", "a", "dict"], "is a list, not an object"),
])
def test_bad_sample_is_named_by_file_and_index_before_the_model_loads(bad, message, tmp_path, no_model):
    from llava.train.train import train

    data = tmp_path / "data.json"
    data.write_text(json.dumps(_samples()[:3] + [bad] + _samples()[3:]))
    with pytest.raises(ValueError) as err:
        train(_argv("unused", data, tmp_path / "out"))
    text = str(err.value)
    assert text.startswith(f"{data}: 1 of 7 samples are malformed: sample 3")
    assert message in text


def test_all_bad_samples_in_one_error(tmp_path):
    from llava.train.data import load_samples

    good = _samples()[0]
    samples = [good] + [{"id": f"bad{i}", "conversations": []} for i in range(12)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(samples))
    with pytest.raises(ValueError) as err:
        load_samples(str(data), str(IMAGES))
    text = str(err.value)
    assert "12 of 13 samples are malformed" in text and "sample 1 (id 'bad0')" in text
    assert "sample 10 (id 'bad9')" in text and "and 2 more" in text
    assert load_samples(str(FIXTURES / "conversations.json"), str(IMAGES)) == _samples()


# ---------------------------------------------------------------- item 9: explicit, safe resume
def _training_args(out, **kw):
    return SimpleNamespace(output_dir=str(out), resume_from_checkpoint=kw.get("resume"),
                           auto_resume_trusted_checkpoints=kw.get("auto", False))


def _checkpoint(out, step):
    path = Path(out) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    return str(path)


def test_checkpoints_in_output_dir_are_not_resumed_without_being_asked(tmp_path, no_model):
    from llava.train.train import resume_checkpoint, train

    out = tmp_path / "out"
    _checkpoint(out, 2)
    newest = _checkpoint(out, 10)
    with pytest.raises(ValueError, match=r"already holds 2 checkpoint\(s\) \(checkpoint-10 the newest\).*"
                                         r"--resume_from_checkpoint latest"):
        train(_argv("unused", FIXTURES / "conversations.json", out))
    assert resume_checkpoint(_training_args(out, resume="latest")) == newest
    assert resume_checkpoint(_training_args(out, auto=True)) == newest
    assert resume_checkpoint(_training_args(out, resume=str(out / "checkpoint-2"))) == str(out / "checkpoint-2")
    assert resume_checkpoint(_training_args(tmp_path / "fresh")) is None


def test_bad_resume_requests(tmp_path):
    from llava.train.arguments import parse_args
    from llava.train.train import resume_checkpoint

    with pytest.raises(ValueError, match="no checkpoint-N folder to resume from"):
        resume_checkpoint(_training_args(tmp_path, resume="latest"))
    with pytest.raises(ValueError, match="is not a folder"):
        resume_checkpoint(_training_args(tmp_path, resume=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="has no trainer_state.json"):
        resume_checkpoint(_training_args(tmp_path, resume=str(tmp_path)))
    *_, training_args, _ = parse_args(_argv("m", "d.json", tmp_path / "o", "--auto_resume_trusted_checkpoints", "True"))
    assert training_args.auto_resume_trusted_checkpoints is True
    help_text = training_args.__dataclass_fields__["auto_resume_trusted_checkpoints"].metadata["help"]
    assert "trusts" in help_text and "weights_only=True" in help_text


def _torch_load_calls(root: Path):
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = (f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                        else func.id if isinstance(func, ast.Name) else None)
                if name in ("torch.load", "load") and (name == "torch.load" or _imports_load_from_torch(tree)):
                    yield path, node


def _imports_load_from_torch(tree) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "torch" and any(a.name == "load" for a in n.names)
               for n in ast.walk(tree))


def test_every_torch_load_is_weights_only():
    calls = [c for root in ("llava", "holov_patches") for c in _torch_load_calls(REPO / root)]
    assert calls, "the scan finds the known calls"
    bad = [f"{p.relative_to(REPO)}:{n.lineno}" for p, n in calls
           if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                      for k in n.keywords)]
    assert not bad, f"torch.load without weights_only=True: {bad}"
    # the text, for calls the AST walk could miss (e.g. built by getattr)
    for root in ("llava", "holov_patches"):
        for path in (REPO / root).rglob("*.py"):
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if "torch.load(" in code and not code.lstrip().startswith(("\"", "'")):
                    assert "weights_only=True" in code, f"{path}:{lineno}: {line.strip()}"


class _Planted:
    """A pickle that runs code when loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_planted_pickle_in_a_deepspeed_checkpoint_raises_instead_of_running(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from llava.train.safe_load import weights_only_loads

    marker = tmp_path / "ran.txt"
    planted = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "evil": _Planted(str(marker))}, planted)
    original = torch.load
    with weights_only_loads():
        with pytest.raises(ValueError) as err:
            TorchCheckpointEngine().load(str(planted), map_location="cpu")
        assert str(planted) in str(err.value) and "it names the global exec" in str(err.value)
        with pytest.raises(ValueError):  # an explicit weights_only=False changes nothing inside
            torch.load(planted, weights_only=False)
        torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
        assert torch.load(tmp_path / "ok.pt", weights_only=False)["w"].shape == (3,)  # plain weights still load
    assert torch.load is original
    assert not marker.exists()
    # what DeepSpeed does without the guard: the planted code runs
    TorchCheckpointEngine().load(str(planted), map_location="cpu")
    assert marker.read_text() == "ran"


def _smoke(out, extra_env=None, *flags, tiny_llava_path=None, zero="zero2", timeout=400) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOKE": "1", "TOKENS": str(KEEP), "METHOD": "cls_topk", "OUTPUT_DIR": str(out),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MODEL": tiny_llava_path,
           "DEEPSPEED": str(REPO / f"scripts/{zero}.json"), **(extra_env or {})}
    env.pop("HOLOV_PRUNING", None)
    return subprocess.run(["bash", str(REPO / "scripts/v1_5/finetune_holov.sh"), *flags], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_zero_checkpoint_resumes_weights_only_and_a_planted_one_is_refused(tiny_llava_path, tmp_path, zero):
    """A real ZeRO-2 / ZeRO-3 checkpoint from the smoke path loads with weights_only=True
    (its few DeepSpeed classes allowed); the same checkpoint with a planted pickle raises,
    and the code in it does not run."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    first = _smoke(out, {"MAX_STEPS": "1"}, "--save_strategy", "steps", "--save_steps", "1",
                   tiny_llava_path=tiny_llava_path, zero=zero)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    ckpt = out / "checkpoint-1"
    states = ckpt / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert states.is_file()
    again = _smoke(out, {"MAX_STEPS": "2"}, tiny_llava_path=tiny_llava_path, zero=zero)  # no resume flag: refused
    assert again.returncode != 0 and "--resume_from_checkpoint latest" in again.stderr
    resumed = _smoke(out, {"MAX_STEPS": "2"}, "--resume_from_checkpoint", "latest", tiny_llava_path=tiny_llava_path,
                     zero=zero)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"[holov] resuming from {ckpt}" in resumed.stdout
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2

    marker = tmp_path / "ran.txt"
    real = torch.load(states, map_location="cpu", weights_only=False)
    real["planted"] = _Planted(str(marker))
    torch.save(real, states)
    planted = _smoke(out, {"MAX_STEPS": "2"}, "--resume_from_checkpoint", str(ckpt), tiny_llava_path=tiny_llava_path,
                     zero=zero)
    assert planted.returncode != 0
    assert f"refusing to load {states}" in planted.stderr and "it names the global exec" in planted.stderr
    assert not marker.exists()


def test_safe_globals_are_what_deepspeed_checkpoints_hold():
    pytest.importorskip("deepspeed")
    from llava.train.safe_load import DEEPSPEED_SAFE_GLOBALS, deepspeed_safe_globals

    classes = deepspeed_safe_globals()
    assert [f"{c.__module__}.{c.__qualname__}" for c in classes] == list(DEEPSPEED_SAFE_GLOBALS)
