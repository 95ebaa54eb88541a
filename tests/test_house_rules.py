"""The layout's rules: the pruning library knows no model, nothing imports in a circle, one
flag table, one budget-split rule, one record type, a self-contained repository."""
from __future__ import annotations

import argparse
import ast
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest
import torch

from holov_patches import PruningConfig
from holov_patches.cli_args import FLAGS, add_pruning_args, pruning_config_from_values, shell_setting

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("holov_patches", "llava", "benchmarks")


# ---------------------------------------------------------------- import graph
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> Dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(path: Path, module: str, modules: Set[str]) -> Set[str]:
    """Every project module that ``path`` imports, at module level or inside a function
    (an import moved into a function still closes a circle). ``from a.b import c`` names the
    module a.b.c when that is a module, else a.b; a package's own ``__init__`` is not an
    implicit target (importing a.b.c runs a/__init__ but does not depend on it)."""
    is_package = path.name == "__init__.py"
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        out.update(n for n in names if n in modules and n != module)
    return out


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_project():
    modules = _project_modules()
    graph = {m: _imports(p, m, set(modules)) for m, p in modules.items()}
    assert graph["holov_patches.methods.holov"] >= {"holov_patches.config", "holov_patches.registry"}
    assert _cycles(graph) == []


def test_pruning_library_never_names_llava_or_benchmarks():
    modules = _project_modules()
    for name, path in modules.items():
        if name.startswith("holov_patches"):
            bad = {m for m in _imports(path, name, set(modules)) if not m.startswith("holov_patches")}
            assert not bad, f"{name} imports {bad}"
            assert "import llava" not in path.read_text() and "from llava" not in path.read_text(), name


@pytest.mark.subprocess
def test_holov_patches_imports_where_llava_cannot():
    # Every submodule but the adapters (which may import transformers) imports with llava blocked.
    code = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "llava" or name.startswith("llava.") or name.startswith("benchmarks"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import holov_patches
names = [m.name for m in pkgutil.walk_packages(holov_patches.__path__, "holov_patches.")]
for name in names:
    importlib.import_module(name)
print(len(names), "transformers" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, transformers_loaded = done.stdout.split()
    assert int(count) >= 10
    assert transformers_loaded == "False"  # the pruning library is torch (+ numpy) only


def test_the_apply_function_is_not_shadowing_a_module():
    import holov_patches
    from holov_patches.adapters import apply as apply_module

    assert inspect.isfunction(holov_patches.apply)
    assert inspect.ismodule(apply_module) and apply_module.apply is holov_patches.apply


# ---------------------------------------------------------------- one flag table
def _entry_point_parsers() -> Dict[str, argparse.ArgumentParser]:
    from llava.eval import eval_common, run_llava
    from llava.serve import cli, visualize

    parsers = {"cli": cli.build_parser(), "run_llava": run_llava.build_parser(),
               "eval": eval_common.build_parser("x", max_new_tokens=8)}
    vis = argparse.ArgumentParser()
    add_pruning_args(vis)
    parsers["visualize"] = vis
    assert "add_pruning_args" in inspect.getsource(visualize)
    return parsers


@pytest.mark.parametrize("flag", FLAGS, ids=[f.name for f in FLAGS])
def test_every_entry_point_accepts_every_flag_in_both_spellings(flag):
    value = flag.choices[-1] if flag.choices else {"prune_method": "holov", "holov_tokens": "32", "prune_ratio": "0.5",
                                                   "holov_crops": "4", "holov_alpha": "0.5"}[flag.name]
    for name, parser in _entry_point_parsers().items():
        for spelling in flag.option_strings:
            actions = {s for a in parser._actions for s in a.option_strings}
            assert spelling in actions, f"{name} lacks {spelling}"
    # training arguments and the lmms-eval plugin take the same names
    from llava.train.arguments import PruningArguments

    assert flag.name in inspect.signature(PruningArguments).parameters
    assert flag.parse(value) is not None


def test_training_arguments_and_plugin_keywords_build_the_same_config():
    from transformers import HfArgumentParser

    from llava.train.arguments import PruningArguments

    (train_args,) = HfArgumentParser(PruningArguments).parse_args_into_dataclasses(
        ["--holov_tokens", "32", "--holov_mode", "improved", "--holov_rank_by", "attention"])
    cli_args = argparse.ArgumentParser()
    add_pruning_args(cli_args)
    parsed = cli_args.parse_args(["--holov-tokens", "32", "--holov-mode", "improved", "--holov-rank-by", "attention"])
    from holov_patches.cli_args import pruning_config_from_args

    expected = PruningConfig(keep=32, mode="improved", rank_by="attention")
    assert train_args.to_config() == expected
    assert pruning_config_from_args(parsed) == expected
    assert pruning_config_from_values({"holov_tokens": "32", "holov_mode": "improved", "holov_rank_by": "attention"}) \
        == expected
    with pytest.raises(ValueError, match="unknown pruning option"):
        pruning_config_from_values({"holov_tokenz": 3})


def test_plugin_constructor_refuses_unknown_model_args():
    from llava.eval.lmms_eval_plugin import LlavaHolov

    with pytest.raises(ValueError, match=r"holov_tokenz.*holov_rank_by"):
        LlavaHolov(pretrained="/nonexistent", holov_tokenz=3)


@pytest.mark.parametrize("env,label,flags", [
    ({"TOKENS": "64"}, "holov", ["--prune-method", "holov", "--holov-tokens", "64", "--holov-mode", "faithful"]),
    ({"TOKENS": ""}, "unpruned", ["--prune-method", "none"]),
    ({"TOKENS": "576"}, "unpruned", ["--prune-method", "none"]),
    ({"TOKENS": "64", "METHOD": "divprune"}, "divprune", ["--prune-method", "divprune", "--holov-tokens", "64"]),
    ({"TOKENS": "64", "MODE": "improved", "RANK_BY": "attention"}, "holov-improved-rank_by-attention",
     ["--prune-method", "holov", "--holov-tokens", "64", "--holov-mode", "improved", "--holov-rank-by", "attention"]),
    ({"TOKENS": "64", "MODE": "improved", "POSITION_IDS": "compact", "CROP_SHAPE": "raster"},
     "holov-improved-crop_shape-raster-positions-compact",
     ["--prune-method", "holov", "--holov-tokens", "64", "--holov-mode", "improved", "--holov-crop-shape", "raster",
      "--holov-position-ids", "compact"]),
    ({"TOKENS": "64", "CROPS": "8", "ALPHA": "0.5"}, "holov-crops-8-alpha-0.5",
     ["--prune-method", "holov", "--holov-tokens", "64", "--holov-mode", "faithful", "--holov-crops", "8",
      "--holov-alpha", "0.5"]),
])
def test_shell_variables_become_flags_and_distinct_labels(env, label, flags):
    assert shell_setting(env, 576) == (label, 576 if label == "unpruned" else 64, flags)


@pytest.mark.parametrize("env,match", [
    ({"TOKENS": "0"}, "TOKENS=0"), ({"TOKENS": "600"}, "below FULL_TOKENS=576"),
    ({"TOKENS": "64", "METHOD": "cls_topk", "MODE": "improved"}, "MODE=improved only applies"),
    ({"TOKENS": "64", "METHOD": "cls_topk", "CROPS": "4"}, "CROPS / ALPHA only apply"),
    ({"TOKENS": "64", "RANK_BY": "attention"}, "only apply to mode='improved'"),
    ({"TOKENS": "", "RANK_BY": "attention"}, "unpruned run"),
    ({"TOKENS": "64", "MODE": "fast"}, "holov_mode='fast'"),
])
def test_bad_shell_variables_are_refused(env, match):
    with pytest.raises(ValueError, match=match):
        shell_setting(env, 576)


@pytest.mark.subprocess
def test_shell_module_prints_assignments_for_eval():
    env = {"TOKENS": "64", "MODE": "improved", "DIVERSITY_SCALE": "image", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "holov_patches.cli_args", "--shell"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "RUN_LABEL=holov-improved-diversity_scale-image", "RUN_K=64",
        "PRUNE_FLAGS=(--prune-method holov --holov-tokens 64 --holov-mode improved --holov-diversity-scale image)"]


# ---------------------------------------------------------------- one budget split
@pytest.mark.parametrize("config,sizes,expected", [
    # K * n_i / total, floors, then the largest remainders (worked by hand):
    (PruningConfig(keep=64), [576, 2000], [14, 50]),      # 14.31 / 49.69 -> 14 / 49, remainder 1 to part 2 (.69)
    (PruningConfig(keep=1), [576, 2000], [0, 1]),         # K = 1 keeps exactly one token, in the larger part
    (PruningConfig(keep=2), [576, 576], [1, 1]),          # exact halves
    (PruningConfig(keep=3), [576, 576], [2, 1]),          # 1.5 / 1.5: the tie goes to the earlier part
    (PruningConfig(keep=5000), [576, 2000], [576, 2000]),  # K above the total keeps everything
    (PruningConfig(ratio=0.889), [576, 1000], [64, 111]),  # K = round(1576 * 0.111) = 175; 63.96 / 111.04
    (PruningConfig(keep=10), [576, 0], [10, 0]),          # a base-only image
    (PruningConfig(keep=7), [3, 3, 3], [3, 2, 2]),        # three parts: 2.33 each, one remainder to the first
])
def test_split_budget_hand_worked(config, sizes, expected):
    assert config.split_budget(sizes) == expected


@pytest.mark.parametrize("sizes", [[], [0, 0], [-1, 5], [2.5, 3]])
def test_split_budget_refuses_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes="):
        PruningConfig(keep=4).split_budget(sizes)


def test_both_llava_next_paths_use_the_config_rule():
    from holov_patches.adapters import hf_llava_next
    from llava.model import llava_arch

    for module in (hf_llava_next, llava_arch):
        assert ".split_budget([" in inspect.getsource(module)
    assert not hasattr(hf_llava_next, "split_budget")


# ---------------------------------------------------------------- the setting and the record
def test_set_pruning_takes_a_resolved_config_only(tiny_llava):
    _, model, _, _ = tiny_llava
    with pytest.raises(TypeError, match="resolve_pruning_config"):
        model.set_pruning("keep=64")
    model.set_pruning(PruningConfig(method="none"))
    assert model.pruning is None


def test_environment_after_loading_changes_nothing(tiny_llava, monkeypatch):
    _, model, _, _ = tiny_llava
    model.set_pruning(None)
    monkeypatch.setenv("HOLOV_PRUNING", "keep=8")
    ids = torch.tensor([[1, 5, -200, 7]])
    pixels = torch.zeros(1, 3, 336, 336)
    embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels)[4]
    assert embeds.shape[1] == 3 + 576  # still unpruned: the setting was resolved at load
    assert model.last_pruning is None


def test_one_record_type_for_our_path_and_the_adapters(tiny_llava):
    from holov_patches.adapters.base import SequencePruningAdapter
    from holov_patches.record import PruningRecord

    _, model, _, _ = tiny_llava
    model.set_pruning(PruningConfig(keep=16))
    try:
        ids = torch.tensor([[1, 5, -200, 7]])
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, torch.zeros(1, 3, 336, 336))
    finally:
        model.set_pruning(None)
    record = model.last_pruning
    assert isinstance(record, PruningRecord)
    assert record.num_tokens == [576] and record.spans == [576] and record.num_pruned == 560
    assert "PruningRecord" in inspect.getsource(SequencePruningAdapter)


# ---------------------------------------------------------------- a self-contained repository
@pytest.mark.subprocess
def test_no_tracked_file_refers_to_the_team_folder():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    needle = "sha" + "red/"  # spelt apart so this file does not match itself
    hits = []
    for name in files:
        path = REPO / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert hits == []
