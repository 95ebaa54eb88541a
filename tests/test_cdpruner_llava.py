"""CDPruner in our LLaVA path: CLIP's image / text embeddings computed from the tower's own
checkpoint (a whole tiny CLIPModel) and the instruction passed as ``pruning_text``; the kept
set equals the library call on inputs computed here independently with transformers."""
from __future__ import annotations

import os

import pytest
import torch

from holov_patches import PruningConfig, prune_visual_tokens
from holov_patches import registry
from llava_helpers import prompt_ids, random_pixels

QUESTION = "What is in the image?"
OTHER = "How many red circles are there on the left?"
LONG = " ".join(["Describe the large triangle beside the small circle and the square."] * 2)  # 77 < CLIP tokens <= 154
KEEP = 64


@pytest.fixture(scope="module")
def clip_llava(tmp_path_factory):
    """(tokenizer, model, image_processor, tower folder) of a tiny LLaVA-1.5 whose tower folder
    is a whole CLIPModel (text tower, projections, CLIP tokenizer)."""
    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import TOWER_DIR, build_tiny_llava

    path = build_tiny_llava(str(tmp_path_factory.mktemp("clip") / "llava-v1.5-tiny-clip"), text_tower=True)
    tok, model, proc, _ = load_pretrained_model(path, None, "llava-v1.5-tiny-clip", device="cpu")
    return tok, model, proc, os.path.join(path, TOWER_DIR)


@pytest.fixture()
def cdpruner(clip_llava):
    model = clip_llava[1]
    model.set_pruning(PruningConfig(method="cdpruner", keep=KEEP))
    yield clip_llava
    model.set_pruning(None)


def independent_kept(model, tower_dir, pixels, text):
    """kept_index [1, K] of the library call on inputs computed from the CLIP checkpoint loaded
    on its own: visual_projection(post_layernorm(hidden_states[-2] patches)) and the text's
    77-token segments through CLIPTextModelWithProjection (as the CDPruner authors' tower)."""
    from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPTokenizer

    clip = CLIPModel.from_pretrained(tower_dir, dtype=torch.float32).eval()
    text_tower = CLIPTextModelWithProjection.from_pretrained(tower_dir, dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tower_dir)
    with torch.no_grad():
        hidden = clip.vision_model(pixels.float(), output_hidden_states=True).hidden_states[-2][:, 1:]
        image_embeds = clip.visual_projection(clip.vision_model.post_layernorm(hidden))
        tokens = model.get_model().mm_projector(hidden.to(model.dtype))
        enc = tokenizer(text, return_tensors="pt")
        segments = -(-enc["input_ids"].shape[1] // 77)
        pad = segments * 77 - enc["input_ids"].shape[1]
        ids = torch.cat([enc["input_ids"], torch.zeros(1, pad, dtype=torch.long)], 1).view(segments, 77)
        mask = torch.cat([enc["attention_mask"], torch.zeros(1, pad, dtype=torch.long)], 1).view(segments, 77)
        text_embeds = text_tower(input_ids=ids, attention_mask=mask).text_embeds  # [M, E]
    side = model.get_vision_tower().num_patches_per_side
    _, index = prune_visual_tokens(tokens, None, PruningConfig(method="cdpruner", keep=KEEP), grid=(side, side),
                                   image_embeds=image_embeds, text_embeds=text_embeds[None])
    return index, segments


@pytest.mark.parametrize("text", [QUESTION, LONG], ids=["one-segment", "two-segments"])
def test_prefill_keeps_the_library_calls_tokens_on_independent_inputs(cdpruner, text):
    tok, model, proc, tower_dir = cdpruner
    ids = prompt_ids(tok, text=text)[None]
    pixels = random_pixels(proc, model.config, 1, seed=3)
    out = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels, pruning_text=text)
    assert out[4].shape[1] == ids.shape[1] - 1 + KEEP  # the text (the <image> tag replaced) + K visual tokens
    kept = model.last_pruning.kept_index[0]
    expected, segments = independent_kept(model, tower_dir, pixels, text)
    assert segments == (1 if text == QUESTION else 2)
    assert kept.shape == (KEEP,)
    assert torch.equal(kept, expected[0])


def test_generate_passes_pruning_text_to_the_prefill(cdpruner):
    tok, model, proc, tower_dir = cdpruner
    ids = prompt_ids(tok, text=QUESTION)[None]
    pixels = random_pixels(proc, model.config, 1, seed=3)
    new = model.generate(ids, images=pixels, pruning_text=QUESTION, do_sample=False, max_new_tokens=3,
                         min_new_tokens=3, pad_token_id=0)
    assert new.shape == (1, 3)
    assert torch.equal(model.last_pruning.kept_index[0], independent_kept(model, tower_dir, pixels, QUESTION)[0][0])


def test_a_different_instruction_keeps_a_different_set(cdpruner):
    tok, model, proc, _ = cdpruner
    pixels = random_pixels(proc, model.config, 1, seed=3)
    kept = {}
    for text in (QUESTION, OTHER):
        model.prepare_inputs_labels_for_multimodal(prompt_ids(tok, text=text)[None], None, None, None, None, pixels,
                                                   pruning_text=text)
        kept[text] = set(model.last_pruning.kept_index[0].tolist())
    assert len(kept[QUESTION]) == len(kept[OTHER]) == KEEP
    assert kept[QUESTION] != kept[OTHER]


def test_one_text_per_image_and_ragged_segments(cdpruner):
    tok, model, proc, tower_dir = cdpruner
    pixels = random_pixels(proc, model.config, 2, seed=4)
    rows = [prompt_ids(tok, text=QUESTION), prompt_ids(tok, text=LONG)]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, :len(row)] = True
    model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, pixels, pruning_text=[QUESTION, LONG])
    for i, text in enumerate((QUESTION, LONG)):  # M = 1 and M = 2: pruned image by image
        expected, _ = independent_kept(model, tower_dir, pixels[i:i + 1], text)
        assert torch.equal(model.last_pruning.kept_index[i], expected[0])
    with pytest.raises(ValueError, match="pruning_text must be one str or a list of 2"):
        model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, pixels, pruning_text=[QUESTION])


def test_missing_text_raises_naming_pruning_text(cdpruner):
    tok, model, proc, _ = cdpruner
    ids = prompt_ids(tok)[None]
    pixels = random_pixels(proc, model.config, 1, seed=3)
    with pytest.raises(ValueError, match="needs the instruction text: pass pruning_text="):
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels)
    with pytest.raises(ValueError, match="pruning_text="):
        model.generate(ids, images=pixels, max_new_tokens=1, pad_token_id=0)


def test_other_methods_ignore_pruning_text(clip_llava):
    tok, model, proc, _ = clip_llava
    ids = prompt_ids(tok)[None]
    pixels = random_pixels(proc, model.config, 1, seed=3)
    try:
        model.set_pruning(PruningConfig(method="cls_topk", keep=KEEP))
        a = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels)[4]
        b = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels, pruning_text=OTHER)[4]
        assert torch.equal(a, b)
    finally:
        model.set_pruning(None)


def test_cdpruner_is_a_llava_method_and_the_saved_checkpoint_has_no_text_tower(cdpruner, tmp_path):
    from llava.model.llava_arch import llava_methods

    tok, model, proc, _ = cdpruner
    assert "cdpruner" in llava_methods()
    model.prepare_inputs_labels_for_multimodal(prompt_ids(tok)[None], None, None, None, None,
                                               random_pixels(proc, model.config, 1, seed=3), pruning_text=QUESTION)
    keys = model.state_dict().keys()
    assert not any("text_tower" in k or "visual_projection" in k for k in keys)


def test_a_vision_only_tower_checkpoint_is_refused_clearly(tiny_llava):
    tok, model, proc, _ = tiny_llava  # its tower folder is a CLIPVisionModel only
    try:
        model.set_pruning(PruningConfig(method="cdpruner", keep=KEEP))
        with pytest.raises(ValueError, match="without a text tower.*visual projection, text tower and tokenizer"):
            model.prepare_inputs_labels_for_multimodal(prompt_ids(tok)[None], None, None, None, None,
                                                       random_pixels(proc, model.config, 1, seed=3),
                                                       pruning_text=QUESTION)
    finally:
        model.set_pruning(None)


def test_llava_refuses_methods_whose_inputs_it_does_not_compute(tiny_llava, monkeypatch):
    """A scratch method needing an input no LLaVA code computes is refused before any work."""
    monkeypatch.setitem(registry.INPUTS, "scratch_input", "an input nothing computes")
    monkeypatch.setitem(registry._REGISTRY, "scratch_needs", registry.PrunerEntry(
        "scratch_needs", lambda *a, **k: None, "projector", "test", needs=("scratch_input",)))
    tok, model, proc, _ = tiny_llava
    from llava.model.llava_arch import llava_methods

    assert "scratch_needs" not in llava_methods() and "cdpruner" in llava_methods()
    try:
        model.set_pruning(PruningConfig(method="scratch_needs", keep=KEEP))
        with pytest.raises(ValueError, match="needs \\['scratch_input'\\], which our LLaVA path does not"):
            model.prepare_inputs_labels_for_multimodal(prompt_ids(tok)[None], None, None, None, None,
                                                       random_pixels(proc, model.config, 1, seed=5))
    finally:
        model.set_pruning(None)


@pytest.fixture()
def seen_texts(monkeypatch):
    """The pruning_text of every splice (and the kept count), recorded on the way through."""
    from llava.model.llava_arch import LlavaMetaForCausalLM

    seen = []
    original = LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal

    def spy(self, *args, pruning_text=None, **kwargs):
        out = original(self, *args, pruning_text=pruning_text, **kwargs)
        if out[4] is not None:  # a prefill (a decode step passes through unspliced)
            seen.append((pruning_text, [int(k.shape[0]) for k in self.last_pruning.kept_index]))
        return out

    monkeypatch.setattr(LlavaMetaForCausalLM, "prepare_inputs_labels_for_multimodal", spy)
    return seen


def test_entry_points_pass_the_question_without_the_answer_format_sentence(clip_llava, seen_texts, tmp_path):
    import json

    from PIL import Image

    from llava.eval import model_vqa_loader, run_llava

    model_path = os.path.dirname(clip_llava[3])
    Image.new("RGB", (40, 30), (200, 20, 20)).save(tmp_path / "red.png")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": "1", "image": "red.png",
                                     "text": "What color is it?\nAnswer the question using a single word or phrase."}) + "\n")
    prune = ["--prune-method", "cdpruner", "--holov-tokens", str(KEEP), "--device", "cpu", "--temperature", "0"]
    assert model_vqa_loader.main(["--model-path", model_path, "--question-file", str(questions), "--image-folder",
                                  str(tmp_path), "--answers-file", str(tmp_path / "a.jsonl"), "--conv-mode",
                                  "vicuna_v1", "--max_new_tokens", "2", *prune]) == 0
    assert seen_texts == [("What color is it?", [KEEP])]
    assert run_llava.main(["--model-path", model_path, "--image-file", str(tmp_path / "red.png"), "--query",
                           "<image>\nWhat is shown?\nAnswer the question using a single word or phrase.",
                           "--max_new_tokens", "2", *prune]) == 0
    assert seen_texts[1] == ("What is shown?", [KEEP])
