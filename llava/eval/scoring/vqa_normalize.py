"""VQA answer normalisation and the VQA soft accuracy, in the official evaluators' variants.

Two official processors share most rules but not all, and the official pipelines chain them:

* the **EvalAI answer processor** (``EvalAIAnswerProcessor`` of mmf, which LLaVA's
  ``m4c_evaluator.py`` carries): LLaVA's VQAv2 / VizWiz converters pass every prediction
  through it, and the TextVQA evaluator passes the prediction and every human answer
  through it -- :func:`normalize_answer`;
* the **VQA API** (``vqaEval.py`` of GT-Vision-Lab/VQA), which scores VQAv2 val: it strips
  newlines / tabs / surrounding spaces, and only when a question's human answers are not all
  the same does it run its (lighter) punctuation and digit/article steps on them and on the
  prediction -- :func:`api_normalize`, :func:`vqa_api_accuracy`.

Rules (EvalAI processor; the VQA API skips step 1 and differs where noted):

1. word tokenisation: lower case; delete ``,`` and ``?``; write ``'s`` as `` 's``; newlines
   and tabs become spaces; strip.
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it
   touches a space in the text or the text holds a digit-comma-digit group (EvalAI: digit,
   one or more commas, digit; VQA API: digit, one comma, digit), and replaced by a space
   otherwise; then every period that is not followed by a digit is deleted (so ``3.5`` keeps
   its point). Both official codes pass ``re.UNICODE`` (= 32) where ``re.sub`` expects its
   count, so **at most 32 periods go per pass** -- an official bug we reproduce.
3. digits and articles: lower case, split on whitespace; number words ``none zero one ...
   ten`` become digits (the "manual map"); the articles ``a an the`` are dropped; words in
   the contraction table get their apostrophe back (``dont`` -> ``don't``); join with single
   spaces. (The VQA API lower-cases only here, so its step 2 sees the original case.)

Soft accuracy of a prediction against N human answers (N = 10 in VQAv2, TextVQA, VizWiz):
for each of the N leave-one-out subsets of N-1 answers, acc = min(1, #matches / 3); the
score is the mean of the N values. With m of the N humans matching, that is
``(m * min(1, (m-1)/3) + (N-m) * min(1, m/3)) / N`` (:func:`vqa_soft_accuracy`, every answer
normalised with the EvalAI processor). :func:`m4c_accuracy` and :func:`vqa_api_accuracy`
compute it literally, in the official codes' order of float operations, so their results are
bit-identical to the official ones.

Written from the definitions above; the tables are the official data, re-typed here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

# ``key value`` pairs: the official contraction table (keys as the VQA code spells them,
# including its one reversed entry "somebody'd" -> "somebodyd").
_CONTRACTION_PAIRS = """
aint ain't
arent aren't
cant can't
couldve could've
couldnt couldn't
couldn'tve couldn't've
couldnt've couldn't've
didnt didn't
doesnt doesn't
dont don't
hadnt hadn't
hadnt've hadn't've
hadn'tve hadn't've
hasnt hasn't
havent haven't
hed he'd
hed've he'd've
he'dve he'd've
hes he's
howd how'd
howll how'll
hows how's
Id've I'd've
I'dve I'd've
Im I'm
Ive I've
isnt isn't
itd it'd
itd've it'd've
it'dve it'd've
itll it'll
let's let's
maam ma'am
mightnt mightn't
mightnt've mightn't've
mightn'tve mightn't've
mightve might've
mustnt mustn't
mustve must've
neednt needn't
notve not've
oclock o'clock
oughtnt oughtn't
ow's'at 'ow's'at
'ows'at 'ow's'at
'ow'sat 'ow's'at
shant shan't
shed've she'd've
she'dve she'd've
she's she's
shouldve should've
shouldnt shouldn't
shouldnt've shouldn't've
shouldn'tve shouldn't've
somebody'd somebodyd
somebodyd've somebody'd've
somebody'dve somebody'd've
somebodyll somebody'll
somebodys somebody's
someoned someone'd
someoned've someone'd've
someone'dve someone'd've
someonell someone'll
someones someone's
somethingd something'd
somethingd've something'd've
something'dve something'd've
somethingll something'll
thats that's
thered there'd
thered've there'd've
there'dve there'd've
therere there're
theres there's
theyd they'd
theyd've they'd've
they'dve they'd've
theyll they'll
theyre they're
theyve they've
twas 'twas
wasnt wasn't
wed've we'd've
we'dve we'd've
weve we've
werent weren't
whatll what'll
whatre what're
whats what's
whatve what've
whens when's
whered where'd
wheres where's
whereve where've
whod who'd
whod've who'd've
who'dve who'd've
wholl who'll
whos who's
whove who've
whyll why'll
whyre why're
whys why's
wont won't
wouldve would've
wouldnt wouldn't
wouldnt've wouldn't've
wouldn'tve wouldn't've
yall y'all
yall'll y'all'll
y'allll y'all'll
yall'd've y'all'd've
y'alld've y'all'd've
y'all'dve y'all'd've
youd you'd
youd've you'd've
you'dve you'd've
youll you'll
youre you're
youve you've
"""

CONTRACTIONS = MappingProxyType(
    dict(line.split(" ") for line in _CONTRACTION_PAIRS.strip().splitlines())
)

# The "manual map" of the VQA code: number words to digits.
NUMBER_WORDS = MappingProxyType(
    {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
     "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
)
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")

_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")  # EvalAI processor
_API_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")  # VQA API (vqaEval.py)
_OFFICIAL_PERIOD_LIMIT = 32  # re.UNICODE passed as the count in the official code


def _tokenize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.replace("\n", " ").replace("\t", " ").strip()


def _punctuation(text: str, digit_comma: re.Pattern) -> str:
    has_digit_comma = digit_comma.search(text) is not None
    out = text
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if (touches_space or has_digit_comma) else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_LIMIT)


def process_punctuation(text: str) -> str:
    """Step 2 (EvalAI): delete or space out punctuation, delete <= 32 periods not before a digit."""
    return _punctuation(text, _DIGIT_COMMA_DIGIT)


def api_process_punctuation(text: str) -> str:
    """Step 2 as the VQA API does it (``processPunctuation``: its own digit-comma-digit test)."""
    return _punctuation(text, _API_DIGIT_COMMA_DIGIT)


def process_digits_articles(text: str) -> str:
    """Step 3: number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The full official answer processing (EvalAI / VQA): steps 1-3 of the module doc."""
    if not isinstance(text, str):
        raise ValueError(f"answer must be a str, got {type(text).__name__}: {text!r}")
    return process_digits_articles(process_punctuation(_tokenize(text)))


def _strip_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def api_normalize(text: str) -> str:
    """The VQA API's processing of an answer of a question whose humans disagree."""
    return process_digits_articles(api_process_punctuation(text))


def vqa_api_accuracy(prediction: str, human_answers: Sequence) -> float:
    """VQA accuracy in [0, 1] of one question exactly as ``vqaEval.evaluate`` computes it.

    ``prediction`` is the answer as it stands in the result file (for LLaVA: already through
    :func:`normalize_answer`, which its converter applies). ``human_answers``: the
    annotation's answer records (dicts with ``"answer"``) or plain strings. Official rules:
    newlines / tabs -> spaces and strip, on all answers; only if the stripped human answers
    are not all equal, :func:`api_normalize` on them and on the prediction (so when all ten
    humans agree, the prediction must equal their answer as written); leave-one-out leaves out
    every record *equal* to the one left out (dict equality: with the official ``answer_id``
    fields that is exactly one; plain strings count as distinct records).
    """
    if len(human_answers) == 0:
        raise ValueError("human_answers is empty: the VQA accuracy needs at least 1 answer")
    records = [dict(a) if isinstance(a, Mapping) else {"answer": a, "_position": i}
               for i, a in enumerate(human_answers)]
    for r in records:
        r["answer"] = _strip_whitespace(r["answer"])
    res = _strip_whitespace(prediction)
    if len({r["answer"] for r in records}) > 1:
        for r in records:
            r["answer"] = api_normalize(r["answer"])
        res = api_normalize(res)
    accs = []
    for left_out in records:
        matching = [r for r in records if r != left_out and r["answer"] == res]
        accs.append(min(1, float(len(matching)) / 3))
    return float(sum(accs)) / len(accs)


def m4c_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] exactly as mmf's ``TextVQAAccuracyEvaluator`` computes it.

    Prediction and every human answer through :func:`normalize_answer`; leave-one-out by
    position; 0.0 when the prediction equals no human answer.
    """
    if len(human_answers) == 0:
        raise ValueError("human_answers is empty: the VQA accuracy needs at least 1 answer")
    pred = normalize_answer(prediction)
    answers = [normalize_answer(a) for a in human_answers]
    if pred not in answers:
        return 0.0
    accs = []
    for i in range(len(answers)):
        matching = [a for j, a in enumerate(answers) if j != i and a == pred]
        accs.append(min(1, float(len(matching)) / 3))
    return sum(accs) / len(accs)


def soft_accuracy_from_matches(matches: int, total: int) -> float:
    """Mean over the ``total`` leave-one-out subsets of min(1, matches_in_subset / 3)."""
    if total < 1 or not 0 <= matches <= total:
        raise ValueError(f"need 0 <= matches <= total and total >= 1, got {matches}/{total}")
    hit_left_out = matches * min(1.0, (matches - 1) / 3)  # the left-out human matched
    miss_left_out = (total - matches) * min(1.0, matches / 3)
    return (hit_left_out + miss_left_out) / total


def vqa_soft_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of one prediction against its human answers (all normalised)."""
    if len(human_answers) == 0:
        raise ValueError("human_answers is empty: the VQA accuracy needs at least 1 answer")
    pred = normalize_answer(prediction)
    normalized = {a: normalize_answer(a) for a in set(human_answers)}  # humans often agree
    matches = sum(normalized[a] == pred for a in human_answers)
    return soft_accuracy_from_matches(matches, len(human_answers))
