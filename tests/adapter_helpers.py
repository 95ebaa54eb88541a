"""Helpers shared by the holov_patches.apply adapter tests (Llava, LlavaNext, Qwen2.5-VL).

The three adapter tests build the same kind of inputs, register the same scratch pruners,
watch what reaches the language model, and make the same checks: keep-all and removal are
bit-identical, and the pruned run equals the unpatched model on the full sequence with the
pruned image tokens masked out (prefill and decode). Each check lives here once. It is a
plain module, not conftest.py, because nothing else in tests/ needs it. pytest puts tests/ on
sys.path (no __init__.py, default "prepend" import mode), so the tests import `adapter_helpers`.
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import holov_patches
from holov_patches import registry


def tiny_clip_and_llama(*, max_position_embeddings, pad_token_id):
    """(CLIPVisionConfig, LlamaConfig) of the tiny random Llava-family models: 56 px images, 14 px patches."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, max_position_embeddings=max_position_embeddings,
                       pad_token_id=pad_token_id)
    return vision, text


def left_padded_prompts(rows, image_span, pad):
    """Prompt ids [B, L], one row per entry of `rows` (a list of images), left-padded to the longest.

    Row r is [1, 5 + r], then image_span(image) + [7] for each of its images, then [9]; the
    differing second token keeps the rows distinct.
    """
    seqs = []
    for r, images in enumerate(rows):
        seq = [1, 5 + r]
        for image in images:
            seq += image_span(image) + [7]
        seqs.append(seq + [9])
    length = max(len(s) for s in seqs)
    return torch.tensor([[pad] * (length - len(s)) + s for s in seqs])


def topk_raster(tokens, cls_attn, keep, *, grid=None):
    """Test pruner: top-K by signal, kept in raster order (K >= N keeps all)."""
    keep = min(keep, tokens.shape[1])
    index = cls_attn.topk(keep, dim=1).indices.sort(dim=1).values  # [B, K]
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[2])), index


def scratch_registry(monkeypatch):
    """register(name, fn) files `fn` as a pre-LLM pruner for one test only (monkeypatch undoes it).

    Every call the adapter makes is recorded in register.calls (tokens, cls_attn, keep, grid),
    so a test can check what each image's pruner was given.
    """
    calls = []

    def register(name, fn):
        def recorded(tokens, cls_attn, keep, *, grid=None, **options):
            calls.append(dict(tokens=tokens, cls_attn=cls_attn, keep=keep, grid=grid))
            return fn(tokens, cls_attn, keep, grid=grid)

        monkeypatch.setitem(registry._REGISTRY, name, registry.PrunerEntry(name, recorded, "projector", "test"))
        return name

    register.calls = calls
    return register


@contextmanager
def lm_inputs(model):
    """Capture what the language model receives (inputs_embeds, position_ids, attention_mask), one dict per call.

    The hook sits on model.model.language_model and is removed on exit, even when the body raises.
    """
    seen = []

    def hook(_module, args, kwargs):
        seen.append({k: kwargs.get(k) for k in ("inputs_embeds", "position_ids", "attention_mask")})

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def generate_or_skip(model, method, inputs, *, pad, max_new_tokens=3):
    """Greedy generate; skips the test when `method` is a registered placeholder (NotImplementedError)."""
    try:
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    except NotImplementedError:
        pytest.skip(f"{method} is still a placeholder")


def pruned_generate_and_forward(model, config, inputs, *, pad, steps):
    """Under `config`: a greedy generate of `steps` tokens with per-step logits, then a plain forward.

    Returns (out, generate_record, forward_logits, forward_record); the records are the
    handle's last_prefill after each call (generate's positions come from the mask's cumsum,
    the plain forward's are 0..L-1, so the two prefills can differ).
    """
    with holov_patches.apply(model, config) as handle:
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, pad_token_id=pad,
                             output_logits=True, return_dict_in_generate=True)
        generate_record = handle.last_prefill
        forward_logits = model(**inputs).logits
        forward_record = handle.last_prefill
    return out, generate_record, forward_logits, forward_record


def assert_keep_all_and_removed_are_bit_identical(model, inputs, keep_all, pruned, *, pad):
    """keep_all (a config that keeps every token) reproduces the unpatched logits and greedy tokens
    bit for bit; `pruned` shortens the sequence; once removed the instance is unpatched and
    bit-identical again."""
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=pad)
    with holov_patches.apply(model, keep_all):
        assert torch.equal(model(**inputs).logits, logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=pad), generated)
    with holov_patches.apply(model, pruned):
        assert model(**inputs).logits.shape[1] < logits.shape[1]
    assert "forward" not in model.__dict__ and "get_image_features" not in model.model.__dict__
    assert torch.equal(model(**inputs).logits, logits)
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=pad), generated)


def masked_reference(inputs, record, image_token):
    """The attention mask that hides the pruned image tokens from the FULL sequence."""
    mask = inputs["attention_mask"].clone()
    kept = torch.zeros_like(mask, dtype=torch.bool)
    kept.scatter_(1, record.source.clamp(min=0), record.source >= 0)
    mask[(inputs["input_ids"] == image_token) & ~kept] = 0
    return mask


def image_runs(ids, image_token):
    """(row, first column, length) of every run of `image_token` in ids [B, L], row-major."""
    runs = []
    for b, row in enumerate(ids.tolist()):
        j = 0
        while j < len(row):
            if row[j] == image_token:
                k = j
                while k < len(row) and row[k] == image_token:
                    k += 1
                runs.append((b, j, k - j))
                j = k
            else:
                j += 1
    return runs


def assert_decode_matches_masked_model(model, out, inputs, mask, positions, *, steps, image_keys, grown_keys=()):
    """Every decode step of the pruned `out` equals the unpatched model run on the FULL sequence so far.

    Checks all `steps` steps (out.logits must hold that many). The reference hides the pruned
    image tokens with `mask` (see masked_reference) and gives the prompt the unpruned
    `positions` ([B, L], or [3, B, L] for mrope), continued by +1 per new token, so a match shows
    decoding resumes from the original positions. image_keys are passed through from inputs;
    grown_keys ([B, L] per-token inputs) are extended with zeros per step.
    """
    batch, length = inputs["input_ids"].shape
    for step in range(steps):
        new = torch.ones(batch, step, dtype=torch.long)  # [B, step] the generated tokens so far
        ref = model(input_ids=out.sequences[:, :length + step], attention_mask=torch.cat([mask, new], 1),
                    position_ids=torch.cat([positions, positions[..., -1:] + torch.arange(1, step + 1)], -1),
                    use_cache=False, **{k: inputs[k] for k in image_keys},
                    **{k: torch.cat([inputs[k], torch.zeros_like(new)], 1) for k in grown_keys}).logits[:, -1]
        assert torch.allclose(out.logits[step], ref, atol=1e-5), step


def assert_kept_columns_match(pruned_logits, full_logits, source, attention_mask):
    """The pruned prefill's logits at every real kept column equal the full model's at that column's source."""
    index = source.clamp(min=0)  # [B, L'] -1 (zero pad) read as column 0, then masked out
    real = (source >= 0) & (attention_mask.gather(1, index) > 0)
    gathered = full_logits.gather(1, index[..., None].expand(-1, -1, full_logits.shape[-1]))  # [B, L', V]
    assert torch.allclose(pruned_logits[real], gathered[real], atol=1e-5)
