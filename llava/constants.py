"""LLaVA's public constants (same names and values as the original package)."""
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200  # placeholder id spliced into input_ids where image features go
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
