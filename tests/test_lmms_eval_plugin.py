"""lmms-eval 0.7.x integration: our ``llava_holov`` model (llava/eval/lmms_eval_plugin.py) and
lmms-eval's stock ``llava`` wrapper running against our ``llava`` package.

In-process tests call the plugin's ``generate_until`` / ``loglikelihood`` with real lmms-eval
``Instance`` objects; end-to-end tests run ``python -m lmms_eval eval`` offline as a subprocess
on the tiny local tasks of tests/fixtures_lmms (a generate_until and a multiple_choice task)
and read the results and samples files it writes. The plugin is found through the
``lmms_eval.models`` entry point that setup.py declares (a throw-away dist-info built from
setup.py's own line, so the test needs no pip install of this repo).
"""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: run scripts/install_lmms_eval.sh first")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402
from PIL import Image  # noqa: E402

from holov_patches import PruningConfig  # noqa: E402
from llava.eval.lmms_eval_plugin import LlavaHolov, _stop_at  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # whole scripts / models end to end

REPO = Path(__file__).resolve().parents[1]


def _load_make_task():
    """tests/fixtures_lmms/make_task.py, loaded by path (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("holov_lmms_make_task", REPO / "tests" / "fixtures_lmms" / "make_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_make_task = _load_make_task()
SAMPLES, write_task = _make_task.SAMPLES, _make_task.write_task

TASK, SPLIT = "holov_tiny", "test"
KEEP = 64  # visual tokens kept of the tiny tower's 576
PRUNE_METHOD = "holov"
QUESTIONS = ("What colour is it?", "Is the image red, green, blue or white? Answer in one word.",
             "Colour?")


# ------------------------------------------------------------------ helpers
def _docs():
    return [{"image": Image.new("RGB", size, rgb), "question": q}
            for (_, rgb, size), q in zip(SAMPLES, QUESTIONS + QUESTIONS[:1])]


def _doc_to_visual(doc):
    return [doc["image"]]


def _instance(kind, arguments, doc_id):
    return Instance(request_type=kind, arguments=arguments, idx=0,
                    metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def _gen_requests(docs, **gen_kwargs):
    return [_instance("generate_until", (doc["question"], dict(gen_kwargs), _doc_to_visual, i, TASK, SPLIT), i)
            for i, doc in enumerate(docs)]


def _load(path, **kwargs):
    lm = LlavaHolov(pretrained=path, device="cpu", device_map="cpu", **kwargs)
    lm.task_dict = {TASK: {SPLIT: _docs()}}
    return lm


@pytest.fixture(scope="module")
def lm_pruned(tiny_llava_path):
    return _load(tiny_llava_path, holov_tokens=KEEP, prune_method=PRUNE_METHOD, holov_mode="faithful")


@pytest.fixture(scope="module")
def lm_full(tiny_llava_path):
    return _load(tiny_llava_path, prune_method="none")  # explicit off, whatever HOLOV_PRUNING says


def _setup_entry_points():
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py declares no entry_points")


def _entry_point_dir(root: Path) -> Path:
    """A dist-info carrying setup.py's entry points, for a subprocess's PYTHONPATH."""
    info = root / "holov_llava_entry_points-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: holov-llava-entry-points\nVersion: 0.0.0\n")
    lines = []
    for group, entries in _setup_entry_points().items():
        lines += [f"[{group}]", *entries, ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return root


# ------------------------------------------------------------------ registration
def test_setup_entry_point_registers_llava_holov():
    from importlib.metadata import EntryPoint

    from lmms_eval.models.registry_v2 import ModelRegistryV2

    (line,) = _setup_entry_points()["lmms_eval.models"]
    name, value = (s.strip() for s in line.split("=", 1))
    payload = EntryPoint(name=name, value=value, group="lmms_eval.models").load()
    registry = ModelRegistryV2()
    registry.register_manifest(payload())
    assert name == "llava_holov"
    assert registry.get_model_class("llava_holov") is LlavaHolov
    assert issubclass(LlavaHolov, lmms) and LlavaHolov.is_simple


@pytest.mark.parametrize("kwargs, bad", [
    ({"holov_token": 64}, "holov_token"),
    ({"batch_size": "auto"}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_batch_size": 16}, "max_batch_size"),
    ({"dtype": "float8"}, "float8"),
    ({"prune_method": "nope"}, "nope"),
    ({"holov_mode": "fast"}, "fast"),
    ({"holov_mode": "improved", "holov_position_ids": "gaps"}, "gaps"),
    ({"conv_template": "vicuna"}, "vicuna"),
])
def test_bad_model_args_raise_value_error(tiny_llava_path, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        LlavaHolov(pretrained=tiny_llava_path, device="cpu", **kwargs)


def test_improved_mode_options_reach_the_model(tiny_llava_path):
    lm = _load(tiny_llava_path, holov_tokens=64, holov_mode="improved", holov_rank_by="attention",
               holov_diversity_scale="image", holov_crop_shape="raster", holov_position_ids="compact")
    assert lm.model.get_pruning() == PruningConfig(keep=64, mode="improved", rank_by="attention",
                                                   diversity_scale="image", crop_shape="raster", position_ids="compact")


def test_stop_at_cuts_at_the_earliest_stop_string():
    assert _stop_at("abc. def\n\nghi", ["\n\n", "."]) == "abc"
    assert _stop_at("abc", ["", "x"]) == "abc"


# ------------------------------------------------------------------ in-process behaviour
def test_pruning_setting_reaches_the_model(lm_pruned, lm_full):
    assert lm_pruned.pruning.method == PRUNE_METHOD and lm_pruned.pruning.keep == KEEP
    assert lm_full.pruning is None
    lm_pruned.generate_until(_gen_requests(_docs()[:1], max_new_tokens=1))
    record = lm_pruned.model.last_pruning
    assert record.num_tokens == [576]
    assert [int((idx >= 0).sum()) for idx in record.kept_index] == [KEEP]


def test_batched_generation_matches_one_at_a_time(lm_pruned):
    docs = _docs()[:3]  # three prompt lengths: left padding must not change any answer
    gen = dict(max_new_tokens=5, temperature=0, do_sample=False, until=[])
    lm_pruned.batch_size_per_gpu = 1
    single = lm_pruned.generate_until(_gen_requests(docs, **gen))
    lm_pruned.batch_size_per_gpu = 3
    try:
        batched = lm_pruned.generate_until(_gen_requests(docs, **gen))
    finally:
        lm_pruned.batch_size_per_gpu = 1
    assert batched == single
    assert all(isinstance(t, str) and t for t in single)


def test_until_stop_strings_cut_the_answer(lm_pruned):
    docs = _docs()[:1]
    (full,) = lm_pruned.generate_until(_gen_requests(docs, max_new_tokens=8, until=[]))
    if len(full) < 3:
        pytest.fail(f"the tiny model produced too short an answer to test stop strings: {full!r}")
    stop = full[1:3]
    (cut,) = lm_pruned.generate_until(_gen_requests(docs, max_new_tokens=8, until=[stop]))
    assert cut == full[:full.find(stop)]
    (cut_str,) = lm_pruned.generate_until(_gen_requests(docs, max_new_tokens=8, until=stop))
    assert cut_str == cut


def _manual_score(lm, doc, continuation):
    """Loss and first-token check computed apart from the plugin: log-softmax over the
    continuation's positions, and greedy generation from the context prompt."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" + doc["question"])
    conv.append_message(conv.roles[1], None)
    ctx = tokenizer_image_token(conv.get_prompt(), lm.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    conv.messages[-1][1] = continuation
    full = tokenizer_image_token(conv.get_prompt(), lm.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    assert torch.equal(full[:ctx.shape[0]], ctx)
    n_cont = full.shape[0] - ctx.shape[0]
    images = process_images([doc["image"]], lm._image_processor, lm.model.config)
    sizes = [doc["image"].size]
    with torch.inference_mode():
        logits = lm.model(input_ids=full[None], images=images, image_sizes=sizes).logits[0]  # [L_expanded, V]
        logp = torch.log_softmax(logits[-n_cont - 1:-1].float(), dim=-1)  # [n_cont, V]
        nll = -logp.gather(1, full[-n_cont:, None]).mean().item()
        first = lm.model.generate(ctx[None], images=images, image_sizes=sizes, max_new_tokens=1, do_sample=False)
    return nll, int(first[0, 0]), int(logits[-n_cont - 1].argmax())


def test_loglikelihood_is_the_continuation_loss(lm_pruned, lm_full):
    doc = lm_pruned.task_dict[TASK][SPLIT][0]
    choices = [" red", " blue"]
    requests = [_instance("loglikelihood", (doc["question"], c, _doc_to_visual, 0, TASK, SPLIT), 0) for c in choices]
    pruned = lm_pruned.loglikelihood(requests)
    full = lm_full.loglikelihood(requests)
    for (loss, greedy), choice in zip(pruned, choices):
        nll, generated_first, predicted_first = _manual_score(lm_pruned, doc, choice)
        assert math.isclose(loss, nll, rel_tol=1e-4, abs_tol=1e-5)
        assert isinstance(greedy, bool)
        # the logits the plugin reads for the first continuation token are the ones generate uses
        assert predicted_first == generated_first
    # 64 of 576 visual tokens change what the language model sees
    assert all(abs(p[0] - f[0]) > 1e-6 for p, f in zip(pruned, full))
    # a callable doc_to_target (loglikelihood output_type) gives the same number as the string
    by_fn = lm_pruned.loglikelihood([_instance("loglikelihood", (doc["question"], lambda d: " red", _doc_to_visual,
                                                                  0, TASK, SPLIT), 0)])
    assert by_fn == pruned[:1]


# ------------------------------------------------------------------ python -m lmms_eval eval
CLI_RUNS = {
    # name: (--model, --model_args after pretrained=..., extra environment)
    "holov": ("llava_holov", f"device=cpu,device_map=cpu,holov_tokens={KEEP},prune_method={PRUNE_METHOD},"
                             "holov_mode=faithful,conv_template=vicuna_v1", {}),
    # The stock wrapper has no pruning args: HOLOV_PRUNING sets it through our loader.
    "stock": ("llava", "device=cpu,device_map=auto", {"HOLOV_PRUNING": "method=cls_topk,keep=32"}),
}


@pytest.fixture(scope="module")
def lmms_runs(tmp_path_factory, tiny_llava_path):
    """Both ``python -m lmms_eval eval`` runs, started together (each is mostly import and
    task-index time); returns name -> (returncode, log, output folder)."""
    root = tmp_path_factory.mktemp("lmms")
    task_dir = write_task(root / "tasks")
    entry_points = _entry_point_dir(root / "entry_points")
    procs = {}
    for name, (model, model_args, extra_env) in CLI_RUNS.items():
        env = {k: v for k, v in os.environ.items() if k != "HOLOV_PRUNING"}
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(root / "hf_home"),
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), str(entry_points), env.get("PYTHONPATH")) if p))
        env.update(extra_env)
        cmd = [sys.executable, "-m", "lmms_eval", "eval", "--model", model,
               "--model_args", f"pretrained={tiny_llava_path},{model_args}",
               "--tasks", "holov_tiny_gen,holov_tiny_mc", "--include_path", str(task_dir),
               "--limit", "2", "--batch_size", "2", "--output_path", str(root / name), "--log_samples"]
        log = open(root / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    runs = {}
    for name, (proc, log) in procs.items():
        try:
            proc.wait(timeout=400)
        finally:
            log.close()
            if proc.poll() is None:
                proc.kill()
        runs[name] = (proc.returncode, (root / f"{name}.log").read_text(), root / name)
    return runs


def _outputs(run):
    """(results dict, samples per task, log); lmms-eval exits 0 even when the evaluation
    failed, so the results file is the proof that it ran."""
    returncode, log, out_dir = run
    results = sorted(out_dir.rglob("*_results.json"))
    assert returncode == 0 and len(results) == 1, f"lmms-eval failed (rc={returncode}):\n{log[-6000:]}"
    samples = {p.name.split("_samples_")[1][:-len(".jsonl")]: [json.loads(x) for x in p.read_text().splitlines()]
               for p in out_dir.rglob("*_samples_*.jsonl")}
    return json.loads(results[0].read_text()), samples, log


def _check_results(results, samples):
    gen, mc = results["results"]["holov_tiny_gen"], results["results"]["holov_tiny_mc"]
    assert 0.0 <= gen["exact_match,none"] <= 1.0
    assert mc["acc,none"] in (0.0, 0.5, 1.0)  # two documents
    assert len(samples["holov_tiny_gen"]) == 2 and len(samples["holov_tiny_mc"]) == 2
    assert all(isinstance(s["filtered_resps"], str) for s in samples["holov_tiny_gen"])
    # each document scored all four choices
    assert all(len(s["filtered_resps"]) == 4 for s in samples["holov_tiny_mc"])


def _losses(samples):
    """Per-choice losses of the multiple_choice samples, documents in order, flattened."""
    docs = sorted(samples["holov_tiny_mc"], key=lambda s: s["doc_id"])
    return [float(loss) for s in docs for loss, _ in s["filtered_resps"]]


def test_cli_llava_holov_model(lmms_runs, lm_pruned, lm_full):
    results, samples, log = _outputs(lmms_runs["holov"])
    _check_results(results, samples)
    assert f"[holov] visual-token pruning: {PRUNE_METHOD}(keep={KEEP}" in log
    # The CLI run's choice losses are those of the in-process pruned model, not the full one.
    docs = [{"image": Image.new("RGB", size, rgb)} for _, rgb, size in SAMPLES[:2]]
    question = "What colour is the image?"
    choices = [" " + name for name, _, _ in SAMPLES]
    expected = {}
    for key, lm in (("pruned", lm_pruned), ("full", lm_full)):
        lm.task_dict = {TASK: {SPLIT: docs}}
        try:
            scores = lm.loglikelihood([_instance("loglikelihood", (question, c, _doc_to_visual, d, TASK, SPLIT), d)
                                       for d in range(2) for c in choices])
        finally:
            lm.task_dict = {TASK: {SPLIT: _docs()}}
        expected[key] = [loss for loss, _ in scores]
    cli = _losses(samples)
    assert cli == pytest.approx(expected["pruned"], rel=1e-4)
    assert max(abs(a - b) for a, b in zip(cli, expected["full"])) > 1e-3


def test_cli_stock_llava_wrapper_on_our_package(lmms_runs):
    results, samples, log = _outputs(lmms_runs["stock"])
    _check_results(results, samples)
    assert "[holov] visual-token pruning: cls_topk(keep=32)" in log
    assert "Using 1 devices with tensor parallelism" in log  # the stock Llava class ran, not ours


def test_wrapper_script_exits_non_zero_when_lmms_eval_fails_silently(tiny_llava_path, tmp_path):
    """lmms-eval exits 0 on an unknown task; scripts/lmms_eval.sh checks the results file."""
    env = {k: v for k, v in os.environ.items() if k != "HOLOV_PRUNING"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run(["bash", str(REPO / "scripts" / "lmms_eval.sh"), "--model", "llava_holov",
                           "--model_args", f"pretrained={tiny_llava_path},device=cpu", "--tasks", "no_such_task_xyz",
                           "--output_path", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "error:" in done.stderr
    missing = subprocess.run(["bash", str(REPO / "scripts" / "lmms_eval.sh"), "--model", "llava_holov"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "pass --output_path" in missing.stderr

