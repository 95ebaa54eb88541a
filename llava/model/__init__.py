from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM  # noqa: F401
from llava.model.language_model.llava_mistral import LlavaMistralConfig, LlavaMistralForCausalLM  # noqa: F401
