"""The CLIP vision tower, loaded from ``mm_vision_tower`` (a hub id or a local path).

Besides the selected layer's patch features it returns the [CLS] -> patch attention of
that layer, averaged over heads, computed from the layer's input with its own q/k
projections, so SDPA stays on for the whole tower. Layers after the selected one are
not run.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from holov_patches.signals import attention_keys_from_hidden, cls_attention_heads_from_hidden

# The pruner inputs (``holov_patches.registry.INPUTS``) this tower can compute.
TOWER_INPUTS = ("cls_attn", "cls_attn_heads", "keys", "cls_token")
# The inputs in CLIP's joint image-text space (CDPruner): they need CLIP's visual projection
# and text tower, which ``CLIPVisionModel`` does not hold; :meth:`CLIPVisionTower.load_text_tower`
# loads them from the same checkpoint, once, the first time a method asks for them.
CLIP_SPACE_INPUTS = ("image_embeds", "text_embeds")


def _layer_indices(select_layer: int, num_layers: int) -> Tuple[int, int]:
    """(layers to run, index of the layer whose attention is read).

    hidden_states has num_layers + 1 entries (embeddings first); attentions has num_layers.
    The authors read hidden_states[select_layer] and attentions[select_layer]; for the
    usual negative select_layer (-2 in LLaVA-1.5) both name the same layer."""
    if not -num_layers - 1 <= select_layer <= num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} is outside [-{num_layers + 1}, {num_layers}] for a {num_layers}-layer tower")
    hidden_index = select_layer % (num_layers + 1)
    if not -num_layers <= select_layer < num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} has no attention map: accepted [-{num_layers}, {num_layers - 1}]")
    attn_index = select_layer % num_layers
    return max(hidden_index, attn_index + 1), attn_index


def run_clip_vision(vision_model: nn.Module, pixel_values: torch.Tensor, select_layer: int,
                    with_cls_attn: bool = True, attention_dtype: str = "model") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run a transformers ``CLIPVisionModel`` only as deep as LLaVA needs.

    Returns (hidden_states[select_layer] [B, T, C], cls_attn [B, T-1] or None); the row is
    computed as ``holov_patches.signals.cls_attention_from_hidden`` does for ``attention_dtype``
    (``model``: in the tower's dtype, as the authors' eager path; ``float32``).
    Equal to the full model's ``output_hidden_states`` entry: the same modules run in the
    same order; the layers after the selected one are skipped."""
    out = clip_vision_signals(vision_model, pixel_values, select_layer, ("cls_attn",) if with_cls_attn else (),
                              attention_dtype)
    return out["hidden"], out.get("cls_attn")


def clip_vision_signals(vision_model: nn.Module, pixel_values: torch.Tensor, select_layer: int,
                        needs: Sequence[str] = (), attention_dtype: str = "model") -> Dict[str, torch.Tensor]:
    """hidden_states[select_layer] (``"hidden"`` [B, T, C], [CLS] first) and the pruner inputs
    named in ``needs`` (of ``TOWER_INPUTS``), all read from the attention of the layer whose
    output is selected, computed only when asked for:
    ``cls_attn`` [B, T-1], ``cls_attn_heads`` [B, H, T-1], ``keys`` [B, T-1, hd] (patch keys,
    heads averaged), ``cls_token`` [B, C] (the selected hidden state's [CLS] row)."""
    unknown = [n for n in needs if n not in TOWER_INPUTS]
    if unknown:
        raise ValueError(f"the CLIP tower cannot compute pruner inputs {unknown}; it computes {list(TOWER_INPUTS)}")
    core = getattr(vision_model, "vision_model", vision_model)  # 4.x nests it, 5.x does not
    layers = core.encoder.layers
    run_layers, attn_index = _layer_indices(select_layer, len(layers))
    hidden = core.pre_layrnorm(core.embeddings(pixel_values))
    hidden_index = select_layer % (len(layers) + 1)
    out: Dict[str, torch.Tensor] = {"hidden": hidden} if hidden_index == 0 else {}
    for i, layer in enumerate(layers[:run_layers]):
        if i == attn_index and set(needs) & {"cls_attn", "cls_attn_heads", "keys"}:
            normed = layer.layer_norm1(hidden)
            if {"cls_attn", "cls_attn_heads"} & set(needs):
                heads = cls_attention_heads_from_hidden(layer.self_attn, normed, attention_dtype)  # [B, H, T-1]
                out.update({"cls_attn": heads.mean(dim=1)} if "cls_attn" in needs else {})
                out.update({"cls_attn_heads": heads} if "cls_attn_heads" in needs else {})
            if "keys" in needs:
                out["keys"] = attention_keys_from_hidden(layer.self_attn, normed)[:, 1:]
        hidden = layer(hidden, None)
        if i + 1 == hidden_index:
            out["hidden"] = hidden
    if "cls_token" in needs:
        out["cls_token"] = out["hidden"][:, 0]
    return out


def image_processor_class():
    """transformers' default CLIP processor needs torchvision; without it (our CPU set-up:
    PyPI's torchvision does not work beside the CPU torch) the PIL one gives the same
    336x336 tensors, and picking it directly avoids a fallback warning on every load."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


class ClipTextSide:
    """CLIP's visual projection, text tower and tokenizer, loaded from the tower's own checkpoint.

    A plain object, not a module: the LLaVA model's ``state_dict`` / ``save_pretrained`` and
    its ``.to(dtype)`` do not see it, so a saved LLaVA checkpoint is unchanged, and the
    projection and text tower stay in float32 (the authors' ``visual_projection(x.float())``)."""

    def __init__(self, visual_projection: nn.Linear, text_tower: nn.Module, tokenizer) -> None:
        self.visual_projection = visual_projection
        self.text_tower = text_tower
        self.tokenizer = tokenizer

    def to(self, device) -> "ClipTextSide":
        self.visual_projection.to(device)
        self.text_tower.to(device)
        return self


def load_clip_text_side(name: str) -> ClipTextSide:
    """The visual projection (of ``CLIPVisionModelWithProjection``), the text tower
    (``CLIPTextModelWithProjection``) and the CLIP tokenizer of checkpoint ``name`` (a hub id or
    a local folder: the LLaVA config's ``mm_vision_tower``), in float32, as the authors'
    ``load_text_tower``. A checkpoint that holds only the vision tower raises ValueError."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection, PretrainedConfig

    why = ("CDPruner's inputs (image_embeds, text_embeds) need CLIP's visual projection, text tower and tokenizer "
           "from the vision tower's own checkpoint (a full CLIPModel such as openai/clip-vit-large-patch14-336)")
    config, _ = PretrainedConfig.get_config_dict(name)
    if config.get("model_type") != "clip" or not isinstance(config.get("text_config"), dict):
        raise ValueError(f"the vision tower checkpoint {name!r} is a {config.get('model_type')!r} model without a text "
                         f"tower; {why}")
    with_projection, info = CLIPVisionModelWithProjection.from_pretrained(name, dtype=torch.float32,
                                                                          output_loading_info=True)
    if any(k.startswith("visual_projection") for k in info["missing_keys"]):
        raise ValueError(f"the vision tower checkpoint {name!r} has no visual_projection weights; {why}")
    text_tower, info = CLIPTextModelWithProjection.from_pretrained(name, dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"the vision tower checkpoint {name!r} lacks text tower weights {sorted(info['missing_keys'])[:4]}; "
                         f"{why}")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"the vision tower checkpoint {name!r} has no CLIP tokenizer ({err}); {why}") from err
    text_tower.requires_grad_(False)
    projection = with_projection.visual_projection.requires_grad_(False)
    del with_projection  # only the projection is kept: the tower itself is LLaVA's own
    return ClipTextSide(projection, text_tower.eval(), tokenizer)


def clip_text_embeds(side: ClipTextSide, text: str) -> torch.Tensor:
    """One instruction -> [M, E] float32: its CLIP tokens (start and end tokens included, not
    truncated) padded with id 0 / mask 0 to M whole segments of the text tower's
    ``max_position_embeddings`` (77), each segment embedded on its own (``text_embeds``), as
    the authors' tower ``forward``."""
    device = side.visual_projection.weight.device
    tokens = side.tokenizer(text=text, return_tensors="pt")
    width = side.text_tower.config.max_position_embeddings
    length = tokens["input_ids"].shape[1]
    segments = (length - 1) // width + 1
    padding = width * segments - length
    inputs = {k: torch.cat([tokens[k], tokens[k].new_zeros((1, padding))], dim=1).reshape(-1, width).to(device)
              for k in ("input_ids", "attention_mask")}
    return side.text_tower(**inputs).text_embeds


class CLIPVisionTower(nn.Module):
    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature={self.select_feature!r} is not one of ('patch', 'cls_patch')")
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            return
        self.image_processor = image_processor_class().from_pretrained(self.vision_tower_name)
        self.vision_tower = CLIPVisionModel.from_pretrained(self.vision_tower_name, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def load_text_tower(self) -> ClipTextSide:
        """CLIP's visual projection, text tower and tokenizer from this tower's checkpoint,
        loaded on first use (see :func:`load_clip_text_side`) and kept on the tower's device."""
        side = getattr(self, "_clip_text_side", None)
        if side is None:
            side = load_clip_text_side(self.vision_tower_name)
            self._clip_text_side = side
        if side.visual_projection.weight.device != self.device:
            side.to(self.device)
        return side

    @torch.no_grad()
    def image_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """The selected layer's features [B, N, C] (in the tower's dtype) -> [B, N, E] float32:
        ``post_layernorm`` in the tower's dtype, then ``visual_projection`` on ``.float()``, as
        the authors' tower ``forward``."""
        core = getattr(self.vision_tower, "vision_model", self.vision_tower)
        normed = core.post_layernorm(features.to(device=self.device, dtype=self.dtype))
        return self.load_text_tower().visual_projection(normed.float())

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> List[torch.Tensor]:
        """Each instruction's CLIP text embedding [M_i, E] float32 (:func:`clip_text_embeds`);
        a text given twice is embedded once."""
        side = self.load_text_tower()
        done: Dict[str, torch.Tensor] = {}
        for text in texts:
            if text not in done:
                done[text] = clip_text_embeds(side, text)
        return [done[text] for text in texts]

    def _features(self, pixel_values: torch.Tensor, with_cls_attn: bool,
                  attention_dtype: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        hidden, cls_attn = run_clip_vision(self.vision_tower, pixel_values.to(device=self.device, dtype=self.dtype),
                                           self.select_layer, with_cls_attn=with_cls_attn, attention_dtype=attention_dtype)
        features = hidden[:, 1:] if self.select_feature == "patch" else hidden
        return features, cls_attn

    @torch.no_grad()
    def tower_inputs(self, images: torch.Tensor, needs: Sequence[str], attention_dtype: str = "model") -> Dict[str, torch.Tensor]:
        """For a tower-stage pruner: ``tokens`` [B, N, C] (the selected layer's patches, in the
        tower's dtype) and the inputs it ``needs`` (see :func:`clip_vision_signals`)."""
        out = clip_vision_signals(self.vision_tower, images.to(device=self.device, dtype=self.dtype), self.select_layer,
                                  needs, attention_dtype)
        out["tokens"] = out.pop("hidden")[:, 1:]
        return out

    @torch.no_grad()
    def forward(self, images: Union[torch.Tensor, List[torch.Tensor]], with_cls_attn: bool = False,
                attention_dtype: str = "model"):
        """images [B, 3, S, S] (or a list of [3, S, S]) -> features [B, N, C] in the
        images' dtype; with ``with_cls_attn`` also the [CLS] attention [B, N] (in the tower's
        dtype for ``attention_dtype="model"``, float32 for ``"float32"``)."""
        if isinstance(images, list):
            images = torch.stack(images, dim=0)
        features, cls_attn = self._features(images, with_cls_attn, attention_dtype)
        features = features.to(images.dtype)
        return (features, cls_attn) if with_cls_attn else features

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self):
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2
