"""Issue 12, item 22: known third-party messages that tell our users nothing are dropped by
their exact text (``llava.utils.quiet_known_warnings``); any other message still shows."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava.utils import quiet_known_warnings

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "playground/fixtures/train/images/green_triangle.png"

GENERATE_LOGGER = "transformers.generation.utils"
CONFIG_LOGGER = "transformers.generation.configuration_utils"
# The messages as transformers 5.24 words them (copied from its output on a checkpoint whose
# generation_config.json holds max_length 4096, temperature 0.9 and top_p 0.6).
MAX_LENGTH_NOTE = ("Both `max_new_tokens` (=4) and `max_length`(=4096) seem to have been set. `max_new_tokens` will "
                   "take precedence. Please refer to the documentation for more information. "
                   "(https://huggingface.co/docs/transformers/main/en/main_classes/text_generation)")
SAMPLING_FLAGS_NOTE = ("The following generation flags are not valid and may be ignored: ['temperature', 'top_p']. "
                       "Set `TRANSFORMERS_VERBOSITY=info` for more details.")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture()
def shown(monkeypatch):
    """{logger name: messages that got past the logger's filters}, with quiet_known_warnings
    installed for this test only (the loggers' filter lists are restored afterwards)."""
    seen = {}
    for name in (GENERATE_LOGGER, CONFIG_LOGGER):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", list(logger.filters))
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "propagate", False)
        handler = Collect()
        logger.addHandler(handler)
        seen[name] = handler.messages
    quiet_known_warnings()
    quiet_known_warnings()  # a second call installs nothing more
    return seen


def test_the_max_length_note_is_dropped_and_other_messages_of_that_logger_show(shown):
    logger = logging.getLogger(GENERATE_LOGGER)
    assert len(logger.filters) == 1
    logger.warning(MAX_LENGTH_NOTE)
    logger.warning(MAX_LENGTH_NOTE.replace("(=4)", "(=512)"))  # other numbers: the same note
    other = ("Both `min_new_tokens` (=4) and `min_length`(=10) seem to have been set. `min_new_tokens` will take "
             "precedence. Please refer to the documentation for more information. "
             "(https://huggingface.co/docs/transformers/main/en/main_classes/text_generation)")
    logger.warning(other)
    logger.warning(MAX_LENGTH_NOTE + " And something else.")  # not the whole message: shown
    assert shown[GENERATE_LOGGER] == [other, MAX_LENGTH_NOTE + " And something else."]


def test_only_the_sampling_flags_note_is_dropped(shown):
    logger = logging.getLogger(CONFIG_LOGGER)
    logger.warning(SAMPLING_FLAGS_NOTE)
    # as worded when transformers' verbosity is below warning (no "Set ..." hint): dropped too
    logger.warning("The following generation flags are not valid and may be ignored: ['top_k'].")
    beams = "The following generation flags are not valid and may be ignored: ['early_stopping']. " \
            "Set `TRANSFORMERS_VERBOSITY=info` for more details."
    mixed = "The following generation flags are not valid and may be ignored: ['temperature', 'pad_token_id']. " \
            "Set `TRANSFORMERS_VERBOSITY=info` for more details."
    logger.warning(beams)
    logger.warning(mixed)
    assert shown[CONFIG_LOGGER] == [beams, mixed]


def test_filters_sit_on_their_own_loggers_only(shown):
    # The same text on another logger (ours, or transformers' root) is not touched.
    elsewhere = logging.getLogger("llava.test_known_warnings")
    handler = Collect()
    elsewhere.addHandler(handler)
    try:
        elsewhere.warning(MAX_LENGTH_NOTE)
    finally:
        elsewhere.removeHandler(handler)
    assert handler.messages == [MAX_LENGTH_NOTE]


def _vicuna_like_checkpoint(tiny_llava_path, tmp_path):
    """A copy of the tiny checkpoint whose generation_config.json carries vicuna's sampling
    defaults and max_length, as the released LLaVA-1.5 checkpoints derived from it do."""
    path = tmp_path / "llava-v1.5-tiny"
    shutil.copytree(tiny_llava_path, path)
    config_file = path / "generation_config.json"
    config = json.loads(config_file.read_text())
    config.pop("_from_model_config", None)
    config.update(temperature=0.9, top_p=0.6, max_length=4096)
    config_file.write_text(json.dumps(config))
    return path


def _env():
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HOLOV_PRUNING", None)
    env.pop("TRANSFORMERS_VERBOSITY", None)
    return env


# Loads and generates without quiet_known_warnings: what transformers prints unfiltered.
UNFILTERED = """
import sys
from llava.mm_utils import load_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
tok, model, proc, _ = load_pretrained_model(sys.argv[1], None, "llava-v1.5-tiny", device="cpu")
ids = tokenizer_image_token("USER: <image>\\nWhat? ASSISTANT:", tok, return_tensors="pt")[None]
image = load_image(sys.argv[2])
model.generate(ids, images=process_images([image], proc, model.config), image_sizes=[image.size], do_sample=False,
               max_new_tokens=4, pad_token_id=tok.pad_token_id)
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_run_llava_on_a_vicuna_like_checkpoint_prints_neither_note(tiny_llava_path, tmp_path):
    path = _vicuna_like_checkpoint(tiny_llava_path, tmp_path)
    # the checkpoint does provoke both notes when nothing filters them ...
    raw = subprocess.run([sys.executable, "-c", UNFILTERED, str(path), str(IMAGE)], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert raw.returncode == 0, raw.stderr[-3000:]
    assert SAMPLING_FLAGS_NOTE in raw.stderr and MAX_LENGTH_NOTE in raw.stderr
    # ... and run_llava (greedy and sampling) prints neither
    for temperature in ("0", "0.2"):
        done = subprocess.run([sys.executable, "-m", "llava.eval.run_llava", "--model-path", str(path), "--image-file",
                               str(IMAGE), "--query", "What?", "--device", "cpu", "--max_new_tokens", "4",
                               "--temperature", temperature], cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "seem to have been set" not in done.stderr
        assert "generation flags are not valid" not in done.stderr
        assert done.stdout.strip()  # it still answers
