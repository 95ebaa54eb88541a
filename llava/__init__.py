"""HoloV-LLaVA: a LLaVA-1.5-compatible package for transformers 5.x with in-tree visual-token pruning."""


def __getattr__(name):
    # Lazy, so that `import llava.constants` (scorers, lmms-eval) does not import transformers.
    if name in ("LlavaLlamaForCausalLM", "LlavaConfig"):
        from llava import model

        return getattr(model, name)
    raise AttributeError(f"module 'llava' has no attribute {name!r}")
