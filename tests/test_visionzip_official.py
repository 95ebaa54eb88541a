"""``visionzip`` is the authors' VisionZip (dvlab-research/VisionZip, CLIP tower forward):
in the tower, [CLS] + dominant patches by head-summed [CLS] attention of layer -2,
contextual tokens merged by layer -2's key similarity, target + mean of the joined.

Checked three ways: hand-worked cases; against transformers 4.37.2 itself (the library the
authors ran) in the side virtualenv, with the authors' steps written there as a plain loop
over images and tokens; and inside our LLaVA path (the projector sees the kept rows)."""
from __future__ import annotations

import copy

import pytest
import torch

from holov_patches import PruningConfig, prune_visual_tokens
from holov_patches.methods.visionzip import default_contextual
from holov_patches.registry import NO_SOURCE_INDEX, get_entry
from llava.model.multimodal_encoder.clip_encoder import clip_vision_signals
from llava_helpers import prompt_ids, random_pixels
from reference_venv import run_reference

NEEDS = ("cls_attn_heads", "keys", "cls_token")


def _zip(tokens, heads, keys, cls, keep, **options):
    return prune_visual_tokens(tokens, None, PruningConfig(method="visionzip", keep=keep, options=options),
                               cls_attn_heads=heads, keys=keys, cls_token=cls)


# ---------------------------------------------------------------- the declaration
def test_declares_the_tower_stage_its_inputs_and_that_it_merges():
    entry = get_entry("visionzip")
    assert entry.stage == "tower" and set(entry.needs) == set(NEEDS) and entry.merges
    assert get_entry("visionzip_projected").stage == "projector"


@pytest.mark.parametrize("keep,contextual", [(64, 10), (128, 20), (192, 30), (2, 0), (1, 0), (8, 1), (16, 3), (24, 4)])  # 16: 2.5 rounds up
def test_budget_split_is_the_readme_ratio_with_the_cls_row_always_kept(keep, contextual):
    assert default_contextual(keep) == contextual


# ---------------------------------------------------------------- hand-worked cases
def _hand_inputs():
    tokens = torch.arange(1.0, 13.0).view(1, 6, 2)  # patch p = (2p + 1, 2p + 2)
    heads = torch.tensor([[[0.10, 0.30, 0.02, 0.20, 0.01, 0.02],
                           [0.00, 0.20, 0.03, 0.10, 0.01, 0.01]]])  # head sums: .10 .50 .05 .30 .02 .03
    keys = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [1.0, 0.1], [0.0, 1.0], [0.2, 1.0], [0.1, -1.0]]])
    cls = torch.tensor([[100.0, 200.0]])
    return tokens, heads, keys, cls


def test_hand_worked_one_contextual_token():
    tokens, heads, keys, cls = _hand_inputs()
    kept, index = _zip(tokens, heads, keys, cls, 4, contextual=1)
    # D = 3 rows: [CLS] + the 2 patches of largest head sums (1 and 3). Remaining 0, 2, 4, 5:
    # step 4 -> target patch 0; 2, 4, 5 join it: (1, 2) + mean((5, 6), (9, 10), (11, 12)).
    assert index.tolist() == [[NO_SOURCE_INDEX, 1, 3, NO_SOURCE_INDEX]]
    expected = torch.tensor([[100.0, 200.0], [3.0, 4.0], [7.0, 8.0], [1.0 + 25 / 3, 2.0 + 28 / 3]])
    torch.testing.assert_close(kept[0], expected)


def test_hand_worked_two_contextual_tokens_join_by_key_similarity():
    tokens, heads, keys, cls = _hand_inputs()
    kept, index = _zip(tokens, heads, keys, cls, 4, contextual=2)
    # D = 2 rows: [CLS] + patch 1. Remaining 0, 2, 3, 4, 5 (R = 5): step 2 -> targets 0 and 3.
    # Keys: 2 (1, .1) is nearest 0's (1, 0); 4 (.2, 1) nearest 3's (0, 1); 5 (.1, -1): cos .0995
    # with 0's key, -.995 with 3's -> joins 0. Contextual: p0 + mean(p2, p5), p3 + p4.
    assert index.tolist() == [[NO_SOURCE_INDEX, 1, NO_SOURCE_INDEX, NO_SOURCE_INDEX]]
    expected = torch.tensor([[100.0, 200.0], [3.0, 4.0], [1.0 + 8.0, 2.0 + 9.0], [7.0 + 9.0, 8.0 + 10.0]])
    torch.testing.assert_close(kept[0], expected)


def test_k_one_keeps_the_cls_token_alone_and_k_n_keeps_every_patch():
    tokens, heads, keys, cls = _hand_inputs()
    kept, index = _zip(tokens, heads, keys, cls, 1)
    assert index.tolist() == [[NO_SOURCE_INDEX]] and torch.equal(kept[0], cls)
    kept, index = _zip(tokens, heads, keys, cls, 6)
    assert index.tolist() == [list(range(6))] and torch.equal(kept, tokens)


@pytest.mark.parametrize("options,match", [({"contextual": 4}, "contextual"), ({"contextual": -1}, "contextual"),
                                           ({"contextual": 1.0}, "contextual")])
def test_bad_split_is_refused(options, match):
    tokens, heads, keys, cls = _hand_inputs()
    with pytest.raises(ValueError, match=match):
        _zip(tokens, heads, keys, cls, 4, **options)


def test_missing_or_misshapen_inputs_are_named():
    tokens, heads, keys, cls = _hand_inputs()
    with pytest.raises(ValueError, match="needs .*keys"):
        prune_visual_tokens(tokens, None, PruningConfig(method="visionzip", keep=4), cls_attn_heads=heads, cls_token=cls)
    with pytest.raises(ValueError, match="keys has shape"):
        _zip(tokens, heads, keys[:, :5], cls, 4)
    with pytest.raises(ValueError, match="all-zero key"):
        _zip(tokens, heads, keys * torch.tensor([1.0, 0, 1, 1, 1, 1])[None, :, None], cls, 4)


# ---------------------------------------------------------------- against transformers 4.37.2
REFERENCE = '''
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel
data = torch.load(payload["path"], weights_only=True)
dtype = getattr(torch, payload["dtype"])
model = CLIPVisionModel(CLIPVisionConfig(**payload["config"])).eval()
model.load_state_dict(data["weights"], strict=True)
model = model.to(dtype)
layer = model.vision_model.encoder.layers[-2].self_attn
heads, hd = layer.num_heads, layer.head_dim
seen = {}
layer.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))
with torch.no_grad():
    out = model(data["pixels"].to(dtype), output_hidden_states=True, output_attentions=True)
attn, hidden = out.attentions[-2], out.hidden_states[-2]          # layer -2, eager, model dtype
bsz, seq, _ = hidden.shape
metric = seen["k"].view(bsz, seq, heads, hd).transpose(1, 2).mean(1)   # keys, heads averaged
dominant_rows, contextual = payload["dominant"], payload["contextual"]
rows_out, dominant_out = [], []
for b in range(bsz):
    score = attn[b, :, 0, 1:].sum(dim=0)                          # summed over heads
    top = sorted((score.topk(dominant_rows - 1).indices + 1).tolist())
    chosen = [0] + top
    rest = [t for t in range(seq) if t not in chosen]
    unit = [metric[b, t] / metric[b, t].norm() for t in rest]
    step = max(1, len(rest) // contextual)
    targets = list(range(0, len(rest), step))[:contextual]
    groups = {c: [] for c in range(len(targets))}
    for j in range(len(rest)):
        if j in targets:
            continue
        sims = [float((unit[j].float() * unit[t].float()).sum()) for t in targets]
        groups[sims.index(max(sims))].append(rest[j])
    rows = [hidden[b, t].float() for t in chosen]
    for c, t in enumerate(targets):
        members = groups[c]
        mean = torch.stack([hidden[b, m].float() for m in members]).mean(0) if members else 0.0
        rows.append(hidden[b, rest[t]].float() + mean)
    rows_out.append(torch.stack(rows).tolist())
    dominant_out.append([t - 1 for t in top])
answer({"rows": rows_out, "dominant": dominant_out})
'''


def _tower_payload(tower, pixels, tmp_path, dtype, keep):
    vision = tower.vision_tower
    weights = {(k if k.startswith("vision_model.") else "vision_model." + k): v
               for k, v in vision.state_dict().items()}
    torch.save({"weights": weights, "pixels": pixels}, tmp_path / "tower.pt")
    c = vision.config
    config = {name: getattr(c, name) for name in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "image_size", "patch_size", "hidden_act",
                                                  "layer_norm_eps", "projection_dim", "num_channels")}
    contextual = default_contextual(keep)
    return {"path": str(tmp_path / "tower.pt"), "config": config, "dtype": str(dtype).split(".")[-1],
            "dominant": keep - contextual, "contextual": contextual}


@pytest.mark.subprocess
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3)])
def test_equals_the_authors_steps_on_transformers_437(tiny_llava, tmp_path, dtype, tol):
    _, model, proc, _ = tiny_llava
    tower = model.get_vision_tower()
    pixels = random_pixels(proc, model.config, 2, seed=3)
    keep = 64
    expected = run_reference(REFERENCE, _tower_payload(tower, pixels, tmp_path, dtype, keep))
    vision = copy.deepcopy(tower.vision_tower).to(dtype)
    with torch.no_grad():
        inputs = clip_vision_signals(vision, pixels.to(dtype), -2, NEEDS, "model")
        kept, index = prune_visual_tokens(inputs["hidden"][:, 1:], None, PruningConfig(method="visionzip", keep=keep),
                                          **{k: inputs[k] for k in NEEDS})
    # The kept patches are the same; the float16 values differ by float16 rounding (<= 5e-3 here)
    # because our tower runs SDPA and 5.x's layers, theirs 4.37's eager attention.
    assert kept.dtype == dtype and kept.shape[1] == keep
    for b in range(2):
        dominant = index[b][index[b] >= 0].tolist()
        assert dominant == expected["dominant"][b]
        assert index[b, 0] == NO_SOURCE_INDEX and bool((index[b, 1 + len(dominant):] == NO_SOURCE_INDEX).all())
        torch.testing.assert_close(kept[b].float(), torch.tensor(expected["rows"][b]), rtol=tol, atol=tol)


# ---------------------------------------------------------------- inside our LLaVA
def test_llava_projects_the_kept_tower_rows_and_renumbers_positions(tiny_llava):
    tok, model, proc, _ = tiny_llava
    ids = prompt_ids(tok)[None]
    pixels = random_pixels(proc, model.config, 1, seed=5)
    tower = model.get_vision_tower()
    with torch.no_grad():
        inputs = clip_vision_signals(tower.vision_tower, pixels, tower.select_layer, NEEDS, "model")
        rows, index = prune_visual_tokens(inputs["hidden"][:, 1:], None, PruningConfig(method="visionzip", keep=64),
                                          **{k: inputs[k] for k in NEEDS})
        expected = model.get_model().mm_projector(rows)[0]
    try:
        model.set_pruning(PruningConfig(method="visionzip", keep=64))
        with torch.no_grad():
            out = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels)
    finally:
        model.set_pruning(None)
    embeds, positions = out[4], out[1]
    start = int((ids[0] == -200).nonzero())
    assert embeds.shape[1] == ids.shape[1] - 1 + 64
    torch.testing.assert_close(embeds[0, start:start + 64], expected)
    assert positions is None  # compact: LLaVA numbers the pruned sequence 0..T'-1 itself
    assert torch.equal(model.last_pruning.kept_index[0], index[0])
    assert int((index[0] == NO_SOURCE_INDEX).sum()) == 1 + 10  # the [CLS] row and 10 contextual rows


def test_llava_refuses_tower_methods_for_image_lists_with_the_alternatives(tiny_llava):
    tok, model, proc, _ = tiny_llava
    ids = prompt_ids(tok)[None]
    pixels = random_pixels(proc, model.config, 1, seed=5)
    try:
        model.set_pruning(PruningConfig(method="visionzip", keep=64))
        with pytest.raises(ValueError, match="single-tile.*visionzip_projected"):
            model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [pixels[0]])
    finally:
        model.set_pruning(None)