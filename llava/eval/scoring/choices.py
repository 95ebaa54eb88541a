"""Reading the chosen option letter out of a multiple-choice answer (our lenient parser).

Used by MMBench's local score, and by ScienceQA and SEED-Bench under ``--parser lenient``
only: their default (official) readings are stricter and live in their modules
(``scienceqa.official_letter``: bare letter, ``"X. ..."``, one ``The answer is ([A-Z]).``;
SEED: the text must equal the letter). MMBench's exact-matching stage (VLMEvalKit
``can_infer``) also accepts an answer that is exactly one option's text. This parser
accepts the union of such forms, never guesses, and returns None when nothing matches so the
caller can count it as unparseable (wrong):

1. the stripped text, less a trailing period and surrounding brackets, is one letter;
2. the text starts with a letter followed by ``.``, ``)`` or ``:`` and then a space or end
   ("B. apostrophe", "(C) dog", "A:");
3. "The answer is X" / "Answer: X" anywhere (case-insensitive words, upper-case letter);
4. ``option_texts`` is given and the text (case-insensitive, trailing period dropped)
   equals exactly one option.

Only upper-case letters among the first ``n_options`` count: a lone "a" is an article.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

LETTERS = string.ascii_uppercase
_LEADING_LETTER = re.compile(r"^\(?([A-Z])[.):](?:\s|$)")
_ANSWER_IS = re.compile(r"(?i:the answer is|answer:)\s*\(?([A-Z])\b")


def parse_option_letter(text: str, n_options: int,
                        option_texts: Sequence[str] | None = None) -> str | None:
    """Return the chosen letter ("A".."Z") or None when the text names no valid option."""
    if not 1 <= n_options <= len(LETTERS):
        raise ValueError(f"n_options must be in 1..{len(LETTERS)}, got {n_options}")
    if option_texts is not None and len(option_texts) != n_options:
        raise ValueError(f"option_texts has {len(option_texts)} entries, n_options is {n_options}")
    valid = LETTERS[:n_options]
    s = text.strip().replace("\n", " ")
    bare = s.rstrip(".").strip().strip("()").strip()
    if len(bare) == 1 and bare in valid:
        return bare
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        m = pattern.search(s)
        if m and m.group(1) in valid:
            return m.group(1)
    if option_texts is not None:
        target = s.rstrip(".").strip().lower()
        hits = [i for i, opt in enumerate(option_texts) if str(opt).strip().lower() == target]
        if len(hits) == 1:
            return valid[hits[0]]
    return None
