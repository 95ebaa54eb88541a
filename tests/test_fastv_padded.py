"""FastV in a right-padded batched forward (lmms-eval's loglikelihood, training batches):
each row is ranked by the attention of ITS last real token, so it keeps the image tokens,
and gets the logits, of the same row run alone. And the default budget of a bare
``method=fastv``."""
from __future__ import annotations

import pytest
import torch

from holov_patches import PruningConfig
from holov_patches.methods import fastv as fastv_method
from llava_helpers import load_deep_llava, noise_pixels, prompt_ids, right_padded

LAYERS, K, KEEP = 5, 2, 64


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    tok, model, proc = load_deep_llava(str(tmp_path_factory.mktemp("padded") / "llava-v1.5-deep"), LAYERS, seed=3)
    yield tok, model, noise_pixels(proc, model.config, 2, seed=0)
    model.set_pruning(None)


def _last_token_row(model, embeds: torch.Tensor, layer_k: int) -> torch.Tensor:
    """[T] layer K-1's attention row of the last token, heads averaged, from the eager path."""
    lm = model.get_model()
    lm.set_attn_implementation("eager")
    try:
        ref = lm(inputs_embeds=embeds, output_attentions=True)
    finally:
        lm.set_attn_implementation("sdpa")
    return ref.attentions[layer_k - 1][0, :, -1].float().mean(0)


@torch.no_grad()
def test_right_padded_rows_keep_and_score_as_alone(deep):
    tok, model, px = deep
    rows = [prompt_ids(tok, "What?"), prompt_ids(tok, "Describe the picture in great detail please, every object.")]
    assert len(rows[0]) < len(rows[1])  # row 0 is padded on the right
    model.set_pruning(PruningConfig(method="fastv", keep=KEEP, options={"layer": K}))
    try:
        alone = []
        for i, row in enumerate(rows):
            out = model(input_ids=row[None], images=px[i:i + 1])
            alone.append((model.fastv_hooks.keep_index[0].clone(), out.logits[0]))
        ids, mask = right_padded(rows)
        out = model(input_ids=ids, attention_mask=mask, images=px)
        index = model.fastv_hooks.keep_index
    finally:
        model.set_pruning(None)
    seq = index.shape[1] + (576 - KEEP)
    for i, (keep, logits) in enumerate(alone):
        # the row's kept positions, then its pads (never pruned: they are not image tokens)
        assert torch.equal(index[i, :keep.numel()], keep), f"row {i}"
        pads = torch.arange(keep.numel() + (576 - KEEP), seq)
        assert torch.equal(index[i, keep.numel():], pads)
        torch.testing.assert_close(out.logits[i, :keep.numel()], logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_alone_the_kept_set_is_the_top_k_of_the_eager_last_token_row(deep):
    """The reference the padded rows are held to: FastV's rule on the row run alone."""
    tok, model, px = deep
    ids = prompt_ids(tok, "What?")[None]
    start = int((ids[0] == -200).nonzero())
    embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, px[:1])[4]
    row = _last_token_row(model, embeds, K)
    kept = row[start:start + 576].topk(KEEP).indices.sort().values + start
    expected = torch.cat([torch.arange(start), kept, torch.arange(start + 576, embeds.shape[1])])
    model.set_pruning(PruningConfig(method="fastv", keep=KEEP, options={"layer": K}))
    try:
        model(input_ids=ids, images=px[:1])
        assert torch.equal(model.fastv_hooks.keep_index[0], expected)
    finally:
        model.set_pruning(None)


def test_bare_fastv_resolves_to_the_paper_default_ratio():
    # FastV's headline setting K=2, R=50%: keep round(576 * (1 - 0.5)) = 288 image tokens
    cfg = PruningConfig(method="fastv")
    assert (cfg.keep, cfg.ratio) == (None, fastv_method.DEFAULT_RATIO) == (None, 0.5)
    assert cfg.resolve_keep(576) == 288
    assert PruningConfig.from_string("method=fastv").resolve_keep(576) == 288
    assert PruningConfig(method="fastv", keep=64).resolve_keep(576) == 64  # an explicit budget still wins
    assert PruningConfig(method="holov").resolve_keep(576) == 64  # methods without a declared default: DEFAULT_KEEP
