"""HoloV visual-token pruning in vLLM, as a vLLM plugin (``vllm.general_plugins`` entry point
``holov = holov_patches.adapters.vllm_plugin:register``, declared in setup.py; docs/serving.md).

vLLM calls :func:`register` in every process it starts. It registers our LLaVA class
under vLLM's own architecture name ``LlavaForConditionalGeneration`` (so a llava-hf
checkpoint needs no change) and under ``HoloVLlavaForConditionalGeneration``. With no
pruning setting the class is vLLM's LLaVA unchanged; ``VLLM_PLUGINS`` without ``holov``
keeps the plugin out altogether. Nothing here imports vLLM until vLLM asks for the model.
"""
from __future__ import annotations

# architecture name -> our class, lazily ("module:Class": imported when vLLM needs it)
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "holov_patches.adapters.vllm_plugin.llava:HoloVLlavaForConditionalGeneration",
    "HoloVLlavaForConditionalGeneration": "holov_patches.adapters.vllm_plugin.llava:HoloVLlavaForConditionalGeneration",
}


def register() -> None:
    """The entry point: safe to call more than once (vLLM does, once per process)."""
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        ModelRegistry.register_model(arch, target)
