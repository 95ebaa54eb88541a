"""LLaVA's public constants (same names and values as the original package)."""
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200  # placeholder id spliced into input_ids where image features go
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"

# Answer-format sentences the LLaVA-1.5 eval prompts append to questions.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MC_PROMPT = "Answer with the option's letter from the given choices directly."
MC_PROMPT_CN = "请直接回答选项字母。"
