"""CDPruner (projector stage): hand-worked cases, and plain-loop references written here
from the authors' ``encode_images`` (Theia-4869/CDPruner, llava/model/llava_arch.py) and from
the definition of greedy DPP MAP inference; they import nothing from the code under test."""
from __future__ import annotations

import math

import pytest
import torch

from holov_patches import PruningConfig, get_pruner, prune_visual_tokens
from holov_patches.methods.cdpruner import relevance_scores
from holov_patches.registry import get_entry

SQRT_3_4 = math.sqrt(0.75)


def relevance_reference(image_embeds, text_embeds, theta=None, over="image"):
    """image_embeds [B, N, E], text_embeds [B, M, E] -> [B][N] relevance, as nested lists (float64)."""
    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))
    raw = [[-sum(cos(patch, seg) for seg in texts) / len(texts) for patch in patches]
           for patches, texts in zip(image_embeds.double().tolist(), text_embeds.double().tolist())]
    everything = [x for row in raw for x in row]
    out = []
    for row in raw:
        low, high = (min(row), max(row)) if over == "image" else (min(everything), max(everything))
        rel = [(x - low + 1e-6) / (high - low) for x in row]
        if theta is not None:
            alpha = theta / (2 * (1 - theta))
            rel = [math.exp(alpha * x) for x in rel]
        out.append(rel)
    return out


def kernel_reference(tokens, relevance):
    """tokens [B, N, D], relevance [B][N] -> per image the N x N list L[i][j] = r_i cos(x_i, x_j) r_j."""
    out = []
    for feats, rel in zip(tokens.double().tolist(), relevance):
        norms = [math.sqrt(sum(a * a for a in f)) for f in feats]
        out.append([[rel[i] * sum(a * b for a, b in zip(feats[i], feats[j])) / (norms[i] * norms[j]) * rel[j]
                     for j in range(len(feats))] for i in range(len(feats))])
    return out


def greedy_cholesky_reference(kernel, keep):
    """Chen et al. 2018 fast greedy MAP on one N x N list kernel, scalar loops -> picks in order."""
    num = len(kernel)
    d2 = [kernel[n][n] for n in range(num)]
    rows, picks = [], []
    for _ in range(keep):
        j = max((n for n in range(num) if n not in picks), key=lambda n: (d2[n], -n))  # first maximum
        e = [(kernel[j][n] - sum(c[j] * c[n] for c in rows)) / math.sqrt(d2[j]) for n in range(num)]
        rows.append(e)
        picks.append(j)
        d2 = [d2[n] - e[n] ** 2 for n in range(num)]
    return picks


def greedy_logdet_reference(kernel, keep):
    """The definition: each step adds the token that maximises det(L_S) of the chosen set S."""
    big = torch.tensor(kernel, dtype=torch.float64)
    picks = []
    for _ in range(keep):
        gains = {n: torch.linalg.det(big[picks + [n]][:, picks + [n]]).item()
                 for n in range(len(kernel)) if n not in picks}
        picks.append(max(gains, key=lambda n: (gains[n], -n)))
    return picks


def _hand_case():
    """4 projected tokens on the axes (exact unit vectors): 0 and 1 point the same way, 2 is
    orthogonal to them, 3 points the opposite way (a duplicate for a DPP: det [[1, -1], [-1, 1]] = 0).
    CLIP-space patches with cosines -1, -1/2, 0, 1 to the one text embedding (1, 0), so the
    negative cosines are 1, 1/2, 0, -1 and the relevance (x + 1 + 1e-6) / 2 is
    ~1, ~0.75, ~0.5, ~0 (each + 5e-7)."""
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]])
    image_embeds = torch.tensor([[[-1.0, 0.0], [-0.5, SQRT_3_4], [0.0, 1.0], [1.0, 0.0]]])
    text_embeds = torch.tensor([[2.0, 0.0]])
    return tokens, image_embeds, text_embeds


def _random_case(batch, num, seed, segments=None):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 24, generator=gen)
    tokens = centres[torch.randint(0, 5, (batch, num), generator=gen)] + 0.5 * torch.randn(batch, num, 24, generator=gen)
    image_embeds = torch.randn(batch, num, 10, generator=gen)
    shape = (batch, 10) if segments is None else (batch, segments, 10)
    return tokens, image_embeds, torch.randn(*shape, generator=gen)


def test_is_registered_after_the_projector_with_clip_inputs():
    entry = get_entry("cdpruner")
    assert entry.stage == "projector" and entry.needs == ("image_embeds", "text_embeds") and not entry.merges


def test_hand_worked_relevance():
    _, image_embeds, text_embeds = _hand_case()
    rel = relevance_scores(image_embeds, text_embeds[:, None])
    torch.testing.assert_close(rel, torch.tensor([[1 + 5e-7, 0.75 + 5e-7, 0.5 + 5e-7, 5e-7]]), rtol=0, atol=1e-6)
    # theta = 0.5: alpha = 0.5 / (2 * 0.5) = 0.5, rel -> exp(rel / 2)
    rel = relevance_scores(image_embeds, text_embeds[:, None], theta=0.5)
    torch.testing.assert_close(rel, torch.tensor([[math.exp(0.5), math.exp(0.375), math.exp(0.25), 1.0]]),
                               rtol=1e-6, atol=1e-6)


def test_hand_worked_picks_the_relevant_then_the_diverse_token():
    # d2 = rel^2 = [1, .5625, .25, ~0]: pick 0. e = S[0] * rel = [1, .75, 0, ~0];
    # d2 -> [-, .5625 - .5625 = 0, .25, ~0]: pick 2, not the duplicate 1 (second by relevance).
    tokens, image_embeds, text_embeds = _hand_case()
    prune = get_pruner("cdpruner")
    kept, index = prune(tokens, None, 2, image_embeds=image_embeds, text_embeds=text_embeds)
    assert index.tolist() == [[0, 2]] and torch.equal(kept, tokens[:, [0, 2]])
    assert prune(tokens, None, 1, image_embeds=image_embeds, text_embeds=text_embeds)[1].tolist() == [[0]]


def test_theta_zero_is_pure_diversity():
    # rel = exp(0) = 1: d2 = [1, 1, 1, 1] picks 0 (first maximum); e = S[0] = [1, 1, 0, -1];
    # d2 -> [-, 0, 1, 0]: picks 2.
    tokens, image_embeds, text_embeds = _hand_case()
    _, index = get_pruner("cdpruner")(tokens, None, 2, image_embeds=image_embeds, text_embeds=text_embeds, theta=0.0)
    assert index.tolist() == [[0, 2]]


def test_constant_relevance_falls_back_to_pure_diversity():
    tokens, image_embeds, text_embeds = _random_case(2, 30, seed=3)
    prune = get_pruner("cdpruner")
    flat = torch.ones_like(image_embeds)  # every patch equally relevant: max == min
    _, index = prune(tokens, None, 8, image_embeds=flat, text_embeds=text_embeds)
    _, diverse = prune(tokens, None, 8, image_embeds=image_embeds, text_embeds=text_embeds, theta=0.0)
    assert torch.equal(index, diverse)


def test_exhausted_span_still_picks_distinct_tokens():
    # Four copies of (1, 0) and one (0, 1), rel = 1: after picking 0 and 4, d2 of 1, 2, 3 is
    # exactly 0; the authors' sqrt(0) would divide by zero. The picks stay distinct.
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    image_embeds, text_embeds = torch.randn(1, 5, 3), torch.randn(1, 3)
    _, index = get_pruner("cdpruner")(tokens, None, 4, image_embeds=image_embeds, text_embeds=text_embeds, theta=0.0)
    assert index.tolist() == [[0, 1, 2, 4]]


@pytest.mark.parametrize("keep", [1, 5, 12, 20])  # below the rank (D = 24): every d2 stays > 0
def test_matches_the_cholesky_reference_and_the_logdet_definition(keep):
    tokens, image_embeds, text_embeds = _random_case(2, 30, seed=keep)
    kept, index = get_pruner("cdpruner")(tokens, None, keep, image_embeds=image_embeds, text_embeds=text_embeds)
    kernels = kernel_reference(tokens, relevance_reference(image_embeds, text_embeds[:, None]))
    cholesky = [sorted(greedy_cholesky_reference(k, keep)) for k in kernels]
    assert index.tolist() == cholesky
    if keep <= 12:
        assert cholesky == [sorted(greedy_logdet_reference(k, keep)) for k in kernels]
    assert torch.equal(kept, tokens.gather(1, index[..., None].expand(-1, -1, 24)))


def test_segments_average_their_cosines():
    tokens, image_embeds, text_embeds = _random_case(1, 25, seed=7, segments=3)
    _, index = get_pruner("cdpruner")(tokens, None, 6, image_embeds=image_embeds, text_embeds=text_embeds)
    kernel = kernel_reference(tokens, relevance_reference(image_embeds, text_embeds))[0]
    assert index.tolist() == [sorted(greedy_cholesky_reference(kernel, 6))]
    # one [B, E] embedding is the same as one segment
    one = get_pruner("cdpruner")(tokens, None, 6, image_embeds=image_embeds, text_embeds=text_embeds[:, 0])[1]
    assert torch.equal(one, get_pruner("cdpruner")(tokens, None, 6, image_embeds=image_embeds,
                                                    text_embeds=text_embeds[:, :1])[1])


def test_relevance_norm_batch_is_the_authors_whole_tensor_min_max():
    tokens, image_embeds, text_embeds = _random_case(2, 20, seed=11)
    # image 0: every patch nearly opposite its text, a narrow band of high negative cosines;
    # image 1 spans a wide range, so the whole-batch minimum lies far below image 0's
    image_embeds[0] = 0.2 * image_embeds[0] - 2 * text_embeds[0]
    results = {}
    for over in ("image", "batch"):
        _, results[over] = get_pruner("cdpruner")(tokens, None, 7, image_embeds=image_embeds,
                                                  text_embeds=text_embeds, relevance_norm=over)
        kernels = kernel_reference(tokens, relevance_reference(image_embeds, text_embeds[:, None], over=over))
        assert results[over].tolist() == [sorted(greedy_cholesky_reference(k, 7)) for k in kernels]
    assert not torch.equal(results["image"], results["batch"])  # the choice of min/max matters here
    single = [get_pruner("cdpruner")(tokens[b:b + 1], None, 7, image_embeds=image_embeds[b:b + 1],
                                     text_embeds=text_embeds[b:b + 1], relevance_norm="batch")[1] for b in range(2)]
    per_image = get_pruner("cdpruner")(tokens, None, 7, image_embeds=image_embeds, text_embeds=text_embeds)[1]
    assert torch.equal(torch.cat(single), per_image)  # for B = 1 the two agree


def test_llava_size_half_precision_tokens():
    gen = torch.Generator().manual_seed(12)
    tokens = torch.randn(1, 576, 64, generator=gen).half()
    image_embeds, text_embeds = torch.randn(1, 576, 16, generator=gen), torch.randn(1, 2, 16, generator=gen)
    kept, index = get_pruner("cdpruner")(tokens, None, 64, image_embeds=image_embeds, text_embeds=text_embeds)
    assert kept.dtype == torch.float16 and index.shape == (1, 64) and index.unique().numel() == 64
    assert bool((index[0, 1:] > index[0, :-1]).all())


def test_through_the_api_and_missing_inputs_are_named():
    tokens, image_embeds, text_embeds = _random_case(1, 36, seed=13)
    config = PruningConfig(method="cdpruner", keep=9, options={"theta": 0.5})
    _, index = prune_visual_tokens(tokens, None, config, grid=(6, 6), image_embeds=image_embeds, text_embeds=text_embeds)
    kernel = kernel_reference(tokens, relevance_reference(image_embeds, text_embeds[:, None], theta=0.5))[0]
    assert index.tolist() == [sorted(greedy_cholesky_reference(kernel, 9))]
    with pytest.raises(ValueError, match=r"needs \['image_embeds', 'text_embeds'\]"):
        prune_visual_tokens(tokens, None, config, grid=(6, 6))  # what an integration without CLIP text gets


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.5"])
def test_bad_theta_raises(bad):
    tokens, image_embeds, text_embeds = _hand_case()
    with pytest.raises(ValueError, match=r"theta=.*\[0, 1\)"):
        get_pruner("cdpruner")(tokens, None, 2, image_embeds=image_embeds, text_embeds=text_embeds, theta=bad)


def test_bad_relevance_norm_raises():
    tokens, image_embeds, text_embeds = _hand_case()
    with pytest.raises(ValueError, match=r"relevance_norm='global' is not one of \('image', 'batch'\)"):
        get_pruner("cdpruner")(tokens, None, 2, image_embeds=image_embeds, text_embeds=text_embeds,
                               relevance_norm="global")


@pytest.mark.parametrize("which,value,match", [
    ("image_embeds", torch.randn(1, 3, 2), r"image_embeds has shape \(1, 3, 2\)"),
    ("image_embeds", None, "image_embeds must be a tensor"),
    ("text_embeds", torch.randn(1, 5), r"text_embeds has shape \(1, 5\)"),
    ("text_embeds", torch.randn(1, 0, 2), "at least one segment"),
    ("text_embeds", torch.zeros(1, 2), "text_embeds hold an all-zero vector"),
    ("image_embeds", torch.tensor([[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]), "image_embeds hold an all-zero"),
    ("text_embeds", torch.tensor([[float("nan"), 1.0]]), "text_embeds holds NaN"),
])
def test_bad_inputs_raise_naming_them(which, value, match):
    tokens, image_embeds, text_embeds = _hand_case()
    inputs = {"image_embeds": image_embeds, "text_embeds": text_embeds, which: value}
    with pytest.raises(ValueError, match=match):
        get_pruner("cdpruner")(tokens, None, 2, **inputs)
