"""The instruction a text-conditioned pruning method (CDPruner) scores the visual tokens
against: ``pruning_text``, passed to ``model.generate`` by our entry points.

As the CDPruner authors' eval scripts (Theia-4869/CDPruner, ``llava/eval/*.py``, which pass
``texts=question`` to ``generate``) derive it from the question:

- ``model_vqa_loader``: the question file's ``text`` with
  ``"\\nAnswer the question using a single word or phrase."`` removed (:func:`loader_text`);
- ``model_vqa``: the question's ``text`` as it is;
- ``model_vqa_mmbench``: hint, question and the option lines, without the
  ``--single-pred-prompt`` sentence ("Answer with the option's letter from the given choices
  directly." / "请直接回答选项字母。");
- ``model_vqa_science``: the question without its ``<image>`` tag and without
  ``"\\nAnswer with the option's letter from the given choices directly."``.

``run_llava`` and the CLI, which their code does not cover, use
:func:`llava.conversation.question_text`: the image tags and all three answer-format
sentences above removed.
"""
from __future__ import annotations

from llava.constants import SHORT_ANSWER_PROMPT


def loader_text(text: str) -> str:
    """``model_vqa_loader``'s pruning text, as the authors': the short-answer sentence removed."""
    return text.replace("\n" + SHORT_ANSWER_PROMPT, "")
