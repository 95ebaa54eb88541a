"""Adapter for transformers' ``LlavaForConditionalGeneration`` (model_type ``"llava"``,
the llava-hf checkpoints of LLaVA-1.5).

Pruner input (HoloV, NeurIPS 2025, arXiv 2510.02912, and every pre-LLM baseline): the
projected patch features of each image [N, D] and the [CLS] -> patch attention of the
CLIP layer whose output LLaVA feeds the projector (``hidden_states[vision_feature_layer]``,
-2 for LLaVA-1.5: ``layers[-2]``), averaged over heads. The row is recomputed from that
layer's attention input, captured by a temporary pre-hook on its ``self_attn``, with the
layer's own q/k projections (:func:`holov_patches.signals.cls_attention_from_hidden`):
SDPA stays on and no attention map is materialised. The pruner gets the patch grid
(24 x 24 for CLIP-L/336); all images of a call are pruned in one batched registry call.

Sequence: image i's N placeholders shrink to its K kept vectors, in the order the pruner
returns them. Positions (``PruningConfig.position_ids``, see ``adapters/base.py``): with
'original' each vector takes the ORIGINAL position id of the patch it came from (positions
keep gaps, the text after the image keeps its position, and a faithful-HoloV image's
positions are as unordered as its tokens); with 'compact' (the default except for improved
HoloV, as the authors' LLaVA code) the pruned sequence is renumbered 0..T'-1.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from holov_patches.adapters.base import PrunedImage, SequencePruningAdapter, captured_argument, prune_part
from holov_patches.signals import cls_attention_from_hidden


def clip_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """The encoder layers of a transformers CLIP vision tower (5.x has no ``.vision_model``)."""
    core = getattr(vision_tower, "vision_model", vision_tower)
    layers = getattr(getattr(core, "encoder", None), "layers", None)
    if layers is None or not all(hasattr(getattr(layer, "self_attn", None), "q_proj") for layer in layers):
        raise ValueError(f"the vision tower {type(vision_tower).__name__} is not a CLIP-style encoder "
                         "(encoder.layers[i].self_attn.q_proj/k_proj); this adapter needs CLIP's [CLS] attention")
    return layers


def selected_layer(vision_feature_layer: Any, num_layers: int) -> int:
    """Index of the layer whose OUTPUT is ``hidden_states[vision_feature_layer]`` (embeddings first)."""
    if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
        raise ValueError(f"vision_feature_layer={vision_feature_layer!r}: pruning needs one int layer in "
                         f"[-{num_layers}, -1] or [1, {num_layers}] (a list of layers has no single [CLS] row)")
    if not -num_layers - 1 <= vision_feature_layer <= num_layers:
        raise ValueError(f"vision_feature_layer={vision_feature_layer} is outside [-{num_layers + 1}, {num_layers}]")
    layer = vision_feature_layer % (num_layers + 1) - 1
    if layer < 0:
        raise ValueError(f"vision_feature_layer={vision_feature_layer} selects the patch embeddings, which have no "
                         f"attention: accepted [-{num_layers}, -1] or [1, {num_layers}]")
    return layer


def resolve_feature_settings(model_config, arguments: Dict[str, Any], required: str, why: str) -> Tuple[Any, str]:
    """(vision_feature_layer, vision_feature_select_strategy): the call's own values, else the
    model config's, as the model resolves them; a strategy other than ``required`` raises
    with ``why``."""
    layer = arguments.get("vision_feature_layer")
    strategy = arguments.get("vision_feature_select_strategy")
    layer = model_config.vision_feature_layer if layer is None else layer
    strategy = model_config.vision_feature_select_strategy if strategy is None else strategy
    if strategy != required:
        raise ValueError(f"vision_feature_select_strategy={strategy!r}: pruning supports {required!r} only ({why})")
    return layer, strategy


def patch_grid(vision_config, num_tokens: int) -> Tuple[int, int]:
    side = vision_config.image_size // vision_config.patch_size
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens per view do not form the {side}x{side} patch grid of the vision tower")
    return side, side


class HFLlavaAdapter(SequencePruningAdapter):
    """Prunes each image's N projected patches to K kept vectors."""

    family = "llava"
    image_inputs = ("pixel_values", "image_sizes")

    def check_model(self, model: nn.Module) -> None:
        base = getattr(model, "model", None)
        if base is None or not hasattr(base, "get_image_features") or not hasattr(base, "vision_tower"):
            raise ValueError(f"{type(model).__name__} has no .model.get_image_features/.vision_tower: "
                             "not a transformers LLaVA model")
        clip_layers(base.vision_tower)

    # -- the signal ----------------------------------------------------------
    def feature_settings(self, arguments: Dict[str, Any]) -> Tuple[Any, str]:
        """(vision_feature_layer, vision_feature_select_strategy) as the model resolves them."""
        return resolve_feature_settings(self.model.config, arguments, "default",
                                        "with 'full' the [CLS] token is a feature and has no [CLS] attention score")

    def signal_module(self, arguments: Dict[str, Any]) -> nn.Module:
        layers = clip_layers(self.base.vision_tower)
        layer, _ = self.feature_settings(arguments)
        return layers[selected_layer(layer, len(layers))].self_attn

    def cls_attention(self, arguments: Dict[str, Any], seen: Dict[str, Any]) -> torch.Tensor:
        """[views, N] [CLS] attention of the selected layer, from its captured input (in the
        tower's dtype or float32, as ``config.attention_dtype`` says)."""
        hidden = captured_argument(seen, "hidden_states", 0, "the selected CLIP layer's self_attn")  # [views, 1+N, C], normed
        with torch.no_grad():
            return cls_attention_from_hidden(self.signal_module(arguments), hidden, self.config.attention_dtype)

    # -- pruning -------------------------------------------------------------
    def prune_encoded(self, arguments: Dict[str, Any], outputs, seen: Dict[str, Any]) -> List[PrunedImage]:
        cls_attn = self.cls_attention(arguments, seen)  # [I, N]
        features = list(outputs.pooler_output)  # per image [N, D]
        if len({int(f.shape[0]) for f in features}) != 1:
            raise ValueError(f"images of different token counts {[int(f.shape[0]) for f in features]} are not "
                             "supported by the llava adapter")
        tokens = torch.stack(features)  # [I, N, D]
        if tuple(cls_attn.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"[CLS] attention {tuple(cls_attn.shape)} does not match the image features {tuple(tokens.shape[:2])}")
        grid = patch_grid(self.model.config.vision_config, tokens.shape[1])
        kept, index = prune_part(tokens, cls_attn, self.config, grid=grid)  # [I, K, D], [I, K]
        return [PrunedImage(vectors=v, offsets=o, index=o, num_tokens=tokens.shape[1], grid=grid) for v, o in zip(kept, index)]

    # -- forward plumbing ----------------------------------------------------
    def encode_images(self, arguments: Dict[str, Any]):
        """``LlavaModel.forward``'s own call on pixel_values."""
        return self.base.get_image_features(
            pixel_values=arguments["pixel_values"], vision_feature_layer=arguments.get("vision_feature_layer"),
            vision_feature_select_strategy=arguments.get("vision_feature_select_strategy"),
            image_sizes=arguments.get("image_sizes"), return_dict=True)

    def original_positions(self, arguments: Dict[str, Any]) -> torch.Tensor:
        """What the unpatched language model uses without position_ids on an empty cache: 0..L-1."""
        ids = arguments["input_ids"]
        batch, length = ids.shape
        return torch.arange(length, device=ids.device).expand(batch, length)
