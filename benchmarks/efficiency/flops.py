"""Analytic prefill FLOPs and KV-cache size of LLaVA-1.5 with visual-token pruning.

Why: a pruner such as HoloV (arXiv 2510.02912) promises a cheaper prefill because the LLM
sees T = text + K tokens instead of text + 576. The efficiency report
(``benchmarks.efficiency``) sets the measured speedups against these counts, so the
counts must be exact for what our code actually runs:

- Convention: one multiply-add = 2 FLOPs; only matrix products are counted (conv,
  linear, attention scores and the attention-weighted sum). Norms, softmax, GELU/SiLU,
  rotary embeddings, residual adds and biases are elementwise and left out (< 1% here).
- Vision tower (CLIP ViT): patch embedding (a conv, 2 * patches * 3*p*p * C) and the
  encoder layers that run. Our tower stops after the selected layer
  (``mm_vision_select_layer=-2``: hidden_states[L-1], so L-1 of L layers run). Per layer
  with Tv = patches + 1 ([CLS]): q/k/v/out projections 4 * 2*Tv*C^2, attention
  4*Tv^2*C (scores and weighted sum), MLP 2 * 2*Tv*C*I.
- Projector: every Linear of the projector (``mlp2x_gelu``: C->D then D->D) over all N
  visual tokens (the pruner runs after the projector, so it always sees all N).
- Pruner: the [CLS] -> patch attention row that pre-LLM pruners read (q of one token,
  k of all Tv, one row of scores) plus the selection's own matrix products, which depend
  on the method's internals (HoloV: one similarity matrix per crop, 2*P*n^2*D), so the
  caller passes them in (the report counts them with ``torch.utils.flop_counter`` on
  the real call). Both are well under 1% of the prefill at LLaVA-1.5-7B shape.
- LLM (LLaMA) per layer over T tokens: q and o projections 2 * 2*T*d*(H*hd), k and v with
  grouped-query attention 2 * 2*T*d*(KV*hd), attention 4*T^2*(H*hd) (the full T x T
  square, as SDPA's math kernel and the eager path compute it; a causal flash kernel
  skips about half), MLP (gate, up, down) 3 * 2*T*d*I. Plus the lm_head for the last
  position only, as in generation prefill (``logits_to_keep=1``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Tuple


@dataclass(frozen=True)
class VisionShape:
    """A CLIP ViT tower: hidden C, MLP size I, layers L, image side S, patch side p."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_size: int = 336
    patch_size: int = 14
    channels: int = 3
    select_layer: int = -2

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def layers_run(self, with_cls_attn: bool) -> int:
        """Encoder layers our tower runs: up to hidden_states[select_layer], and up to the
        layer whose attention row is read when a pruner needs it (the same layer for -2)."""
        total = self.layers
        if not -total - 1 <= self.select_layer <= total:
            raise ValueError(f"select_layer={self.select_layer} is outside [-{total + 1}, {total}] for a {total}-layer tower")
        hidden_index = self.select_layer % (total + 1)
        if not with_cls_attn:
            return hidden_index
        return max(hidden_index, self.select_layer % total + 1)


@dataclass(frozen=True)
class LLMShape:
    """A LLaMA decoder: hidden d, layers, H query heads, KV heads, head dim hd, MLP size I, vocab V."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class LlavaShape:
    llm: LLMShape
    vision: VisionShape
    projector: Tuple[Tuple[int, int], ...] = field(default=())  # (in, out) of each Linear, in order

    def to_dict(self) -> Dict:
        return asdict(self)


def llava15_7b_shape() -> LlavaShape:
    """LLaVA-1.5-7B: Vicuna/LLaMA-7B (4096 x 32 layers, 32 heads, MLP 11008, vocab 32000),
    CLIP ViT-L/14-336 (1024 x 24 layers, 16 heads, MLP 4096), mlp2x_gelu projector."""
    return LlavaShape(llm=LLMShape(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32000),
                      vision=VisionShape(hidden=1024, intermediate=4096, layers=24, heads=16),
                      projector=((1024, 4096), (4096, 4096)))


def shape_from_model(model) -> LlavaShape:
    """Read the shape of a loaded ``LlavaLlamaForCausalLM`` (config plus the projector's Linear layers)."""
    from torch import nn

    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    llm = LLMShape(hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   intermediate=cfg.intermediate_size, vocab=model.lm_head.out_features)
    tower = model.get_vision_tower()
    vc = tower.config
    vision = VisionShape(hidden=vc.hidden_size, intermediate=vc.intermediate_size, layers=vc.num_hidden_layers,
                         heads=vc.num_attention_heads, image_size=vc.image_size, patch_size=vc.patch_size,
                         channels=vc.num_channels, select_layer=tower.select_layer)
    projector = tuple((m.in_features, m.out_features) for m in model.get_model().mm_projector.modules() if isinstance(m, nn.Linear))
    return LlavaShape(llm=llm, vision=vision, projector=projector)


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def vision_tower_flops(v: VisionShape, with_cls_attn: bool = False) -> int:
    """Patch embedding plus the encoder layers that run (the [CLS] row itself is counted under the pruner)."""
    tokens = v.patches + 1
    embed = 2 * v.patches * (v.channels * v.patch_size ** 2) * v.hidden
    per_layer = 4 * 2 * tokens * v.hidden ** 2 + 4 * tokens ** 2 * v.hidden + 2 * 2 * tokens * v.hidden * v.intermediate
    return embed + v.layers_run(with_cls_attn) * per_layer


def cls_row_flops(v: VisionShape) -> int:
    """The [CLS] -> patch attention row: q of [CLS], k of all tokens, one row of scores."""
    tokens = v.patches + 1
    return 2 * v.hidden ** 2 + 2 * tokens * v.hidden ** 2 + 2 * tokens * v.hidden


def projector_flops(shape: LlavaShape, num_tokens: int) -> int:
    _check_count("num_tokens", num_tokens)
    return sum(2 * num_tokens * fan_in * fan_out for fan_in, fan_out in shape.projector)


def pruner_flops(shape: LlavaShape, selection_flops: int = 0) -> int:
    """The [CLS] row plus the selection's own FLOPs (method-specific, given by the caller)."""
    _check_count("selection_flops", selection_flops)
    return cls_row_flops(shape.vision) + selection_flops


def llm_layer_flops(m: LLMShape, tokens: int, context: int | None = None) -> int:
    """One decoder layer over ``tokens`` new tokens attending to ``context`` tokens (default: themselves)."""
    _check_count("tokens", tokens)
    context = tokens if context is None else context
    q_width, kv_width = m.heads * m.head_dim, m.kv_heads * m.head_dim
    projections = 2 * 2 * tokens * m.hidden * q_width + 2 * 2 * tokens * m.hidden * kv_width
    attention = 4 * tokens * context * q_width
    mlp = 3 * 2 * tokens * m.hidden * m.intermediate
    return projections + attention + mlp


def llm_prefill_flops(m: LLMShape, tokens: int) -> int:
    """All layers over the T prompt tokens plus the lm_head for the last position."""
    return m.layers * llm_layer_flops(m, tokens) + 2 * m.hidden * m.vocab


def decode_flops_per_token(m: LLMShape, context: int) -> int:
    """One generated token attending to ``context`` cached tokens plus itself, with its lm_head."""
    _check_count("context", context)
    return m.layers * llm_layer_flops(m, 1, context + 1) + 2 * m.hidden * m.vocab


def kv_cache_bytes(m: LLMShape, tokens: int, bytes_per_element: int) -> int:
    """2 (K and V) x layers x KV heads x head dim x T x bytes per element."""
    _check_count("tokens", tokens)
    _check_count("bytes_per_element", bytes_per_element, 1)
    return 2 * m.layers * m.kv_heads * m.head_dim * tokens * bytes_per_element


def prefill_flops(shape: LlavaShape, text_tokens: int, kept: int | None, selection_flops: int = 0) -> Dict[str, int]:
    """FLOPs of one generation prefill for one image: ``kept`` visual tokens (None = no
    pruning), ``selection_flops`` those of the pruner's selection step.

    Returns the parts (vision, projector, pruner, llm), their total and T."""
    _check_count("text_tokens", text_tokens)
    n = shape.vision.patches
    if kept is not None:
        _check_count("kept", kept, 1)
        if kept > n:
            raise ValueError(f"kept={kept} must be in [1, {n}] (the tower gives {n} visual tokens)")
    pruned = kept is not None
    tokens = text_tokens + (kept if pruned else n)
    parts = {
        "vision": vision_tower_flops(shape.vision, with_cls_attn=pruned),
        "projector": projector_flops(shape, n),
        "pruner": pruner_flops(shape, selection_flops) if pruned else 0,
        "llm": llm_prefill_flops(shape.llm, tokens),
    }
    parts["total"] = sum(parts.values())
    parts["tokens"] = tokens
    return parts
