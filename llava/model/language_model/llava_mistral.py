"""LLaVA on a Mistral backbone (``liuhaotian/llava-v1.6-mistral-7b``), for transformers 5.x."""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, MistralForCausalLM, MistralModel

from llava.model.language_model.llava_causal_lm import LlavaCausalLMMixin
from llava.model.llava_arch import LlavaMetaModel


class LlavaMistralConfig(MistralConfig):
    model_type = "llava_mistral"


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig

    def __init__(self, config: MistralConfig):
        super().__init__(config)


class LlavaMistralForCausalLM(LlavaCausalLMMixin, MistralForCausalLM):
    config_class = LlavaMistralConfig

    def __init__(self, config):
        MistralForCausalLM.__init__(self, config)
        self.model = LlavaMistralModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register("llava_mistral", LlavaMistralConfig)
AutoModelForCausalLM.register(LlavaMistralConfig, LlavaMistralForCausalLM)
