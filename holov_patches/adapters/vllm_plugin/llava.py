"""HoloV pruning inside vLLM's LLaVA-1.5 (``LlavaForConditionalGeneration``, llava-hf layout).

The classes subclass vLLM's own and are built on first use (a module ``__getattr__``), so
this module imports without vLLM (``vllm.model_executor.models.llava`` is imported then).

* :class:`HoloVLlavaProcessingInfo`: ``get_num_image_tokens`` returns K, so the prompt
  gets K image placeholders per image (vLLM schedules, caches and numbers positions
  0..T'-1 for the shorter prompt: the transformers adapters' ``position_ids="compact"``).
* ``HoloVLlavaForConditionalGeneration``: runs vLLM's CLIP tower and projector unchanged,
  recomputes the [CLS] -> patch attention row of the selected layer from that layer's
  input (a forward pre-hook on its attention; vLLM's attention returns no weights), and
  returns each image's K kept vectors from the one registry call ``prune_visual_tokens``.

With pruning off (no setting resolved) the processor is vLLM's own and the model's
methods are its parent's: vLLM's LLaVA unchanged.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from holov_patches.signals import cls_attention_from_hidden
from holov_patches.adapters.vllm_plugin.settings import FusedQK, check_tower, kept_count, prune_projected, resolve_vllm_pruning

CLASS_NAMES = ("HoloVLlavaForConditionalGeneration", "HoloVLlavaProcessingInfo")
_built: Dict[str, Any] = {}


def engine_pruning(model_config):
    """The pruning setting of the engine whose ``ModelConfig`` is given (None = off)."""
    return resolve_vllm_pruning(model_config.hf_config, getattr(model_config, "hf_overrides", None))


def _build() -> Dict[str, Any]:
    if _built:
        return _built
    import vllm.model_executor.models.llava as vllm_llava
    from vllm.multimodal import MULTIMODAL_REGISTRY

    class HoloVLlavaProcessingInfo(vllm_llava.LlavaProcessingInfo):
        """vLLM's LLaVA processing info, with K placeholders per image."""

        def holov_pruning(self):
            return engine_pruning(self.ctx.model_config)

        def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
            num = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
            cfg = self.holov_pruning()
            return num if cfg is None else kept_count(cfg, num)

    def build_info(ctx):
        if engine_pruning(ctx.model_config) is None:
            return vllm_llava._build_llava_or_pixtral_hf_info(ctx)  # off: vLLM's own
        check_tower(ctx.get_hf_config())
        return HoloVLlavaProcessingInfo(ctx)

    @MULTIMODAL_REGISTRY.register_processor(vllm_llava._build_llava_or_pixtral_hf_processor, info=build_info,
                                            dummy_inputs=vllm_llava.LlavaDummyInputsBuilder)
    class HoloVLlavaForConditionalGeneration(vllm_llava.LlavaForConditionalGeneration):
        """vLLM's LLaVA; with a pruning setting, each image's projected tokens are pruned to K."""

        def __init__(self, *, vllm_config, prefix: str = "") -> None:
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            self.holov_pruning = engine_pruning(vllm_config.model_config)
            if self.holov_pruning is not None:
                self.holov_layer, side = check_tower(self.config)
                self.holov_grid = (side, side)

        def _process_image_input(self, image_input):
            cfg = self.holov_pruning
            if cfg is None or image_input["type"] != "pixel_values":
                return super()._process_image_input(image_input)  # off, or embeddings given: as vLLM
            attn = self.vision_tower.vision_model.encoder.layers[self.holov_layer].self_attn
            seen = {}

            def capture(_module, args, kwargs):
                seen["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

            hook = attn.register_forward_pre_hook(capture, with_kwargs=True)
            try:
                features = self._process_image_pixels(image_input)  # [I, N, C], [CLS] dropped
            finally:
                hook.remove()
            if not isinstance(features, torch.Tensor):
                features = torch.stack(list(features))
            with torch.no_grad():
                cls_attn = cls_attention_from_hidden(FusedQK(attn), seen["hidden"], cfg.attention_dtype)  # [I, N]
            projected = self.multi_modal_projector(features)  # [I, N, D]
            kept, _ = prune_projected(projected, cls_attn, cfg, self.holov_grid, image_input["pixel_values"])
            return kept  # [I, K, D]: one [K, D] per image

    _built.update(HoloVLlavaForConditionalGeneration=HoloVLlavaForConditionalGeneration,
                  HoloVLlavaProcessingInfo=HoloVLlavaProcessingInfo)
    return _built


def __getattr__(name: str):
    if name in CLASS_NAMES:
        return _build()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
