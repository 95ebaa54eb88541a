"""The causal-LM side shared by every LLaVA backbone (LLaMA/Vicuna, Mistral), for transformers 5.x.

Differences from the original that 5.x forces: ``forward`` and
``prepare_inputs_for_generation`` take the new keywords (``cache_position``, cache
objects) through ``**kwargs``; ``generate`` left-pads the spliced batch and returns only
the new tokens.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from transformers import LlamaForCausalLM

from llava.model.llava_arch import LlavaMetaForCausalLM, check_prompt_length

# transformers 5.24 renamed the cache keyword from past_key_values to cache.
_CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


class LlavaCausalLMMixin(LlavaMetaForCausalLM):
    """Put it first in a model's bases: its ``super()`` calls then reach the transformers
    causal LM (``LlamaForCausalLM``, ``MistralForCausalLM``, ...)."""

    def get_model(self):
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, images=None, image_sizes=None, return_dict=None, pruning_text=None, **kwargs):
        cache = kwargs.pop("cache", None) if _CACHE_KW == "cache" else None
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, cache, inputs_embeds, labels) = \
                self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask, cache,
                                                          labels, images, image_sizes, pruning_text=pruning_text)
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
        fastv = self.fastv_hooks
        if fastv is None or labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                                   **{_CACHE_KW: cache}, **kwargs)
        # FastV shortens the sequence inside the LLM: score the kept positions' labels.
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              inputs_embeds=inputs_embeds, use_cache=use_cache, **{_CACHE_KW: cache}, **kwargs)
        if fastv.keep_index is not None and out.logits.shape[1] != labels.shape[1]:
            labels = labels.gather(1, fastv.keep_index.to(labels.device))
        out.loss = self.loss_function(logits=out.logits, labels=labels, vocab_size=self.config.vocab_size)
        return out

    @torch.no_grad()
    def generate(self, inputs: Optional[torch.Tensor] = None, images=None, image_sizes=None, pruning_text=None, **kwargs):
        """Like LLaVA's generate, but returns only the newly generated tokens.

        ``pruning_text``: the instruction (one str, or one per image) a text-conditioned pruning
        method (CDPruner) scores the visual tokens against; used at the prefill only, ignored by
        the other methods."""
        if "inputs_embeds" in kwargs:
            raise ValueError("pass input_ids (and images), not inputs_embeds, to LlavaLlamaForCausalLM.generate")
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if inputs is None:
            raise ValueError("generate needs input_ids")
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        decode_positions = None
        if images is not None:
            _, position_ids, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes=image_sizes, padding_side="left",
                pruning_text=pruning_text)
            if position_ids is not None:  # pruned with original positions (or given by the caller)
                # left-padded: the last column is each row's last prompt position
                decode_positions = (position_ids, position_ids[:, -1] + 1, inputs_embeds.shape[1])
        else:
            max_len = getattr(self.config, "tokenizer_model_max_length", None)
            if max_len is not None:
                check_prompt_length([inputs.shape[1]], max_len)
            inputs_embeds = self.get_model().embed_tokens(inputs)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if decode_positions is not None:
            # Passed down as a generation keyword: prepare_inputs_for_generation receives it at every step.
            kwargs["pruned_positions"] = decode_positions
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    @staticmethod
    def _original_position_ids(inputs, state) -> torch.Tensor:
        """Position ids when pruned tokens keep their original positions: the prompt's own
        (with gaps) at the prefill, then counting on from each row's unpruned length.
        ``state`` = (prompt positions [B, T'], next position per row [B], pruned prompt length)."""
        prompt_positions, next_positions, prompt_len = state
        if inputs.get("inputs_embeds") is not None:
            positions = prompt_positions
        else:
            cache = inputs.get(_CACHE_KW)
            if cache is None:
                raise ValueError("generation with pruned, original-position tokens needs use_cache=True")
            done = cache.get_seq_length() - prompt_len  # tokens generated and already cached
            fed = inputs["input_ids"].shape[1]
            steps = torch.arange(done, done + fed, device=next_positions.device)
            positions = next_positions[:, None] + steps[None]
        rows = (inputs["inputs_embeds"] if inputs.get("input_ids") is None else inputs["input_ids"]).shape[0]
        return positions.repeat_interleave(rows // positions.shape[0], dim=0)  # beams / several return sequences

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, pruned_positions=None, **kwargs):
        # inputs_embeds and pruned_positions must be named parameters: generate() checks the signature.
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if pruned_positions is not None:
            inputs["position_ids"] = self._original_position_ids(inputs, pruned_positions)
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs
