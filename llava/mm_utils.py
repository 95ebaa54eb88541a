"""Image and prompt helpers with LLaVA's public names: process_images, expand2square,
the anyres helpers, tokenizer_image_token, get_model_name_from_path,
KeywordsStoppingCriteria, load_image."""
from __future__ import annotations

import ast
import base64
import json
import math
import os
import re
import weakref
from io import BytesIO
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import IMAGE_TOKEN_INDEX


# ---------------------------------------------------------------- images
URL_TIMEOUT_S = 30.0  # seconds an image URL may take: each wait for the server, and the download
URL_MAX_BYTES = 50 * 2 ** 20  # 50 MiB
# Modes whose values do not fit in 8 bits: convert("RGB") clips them (a 16-bit PNG turns white).
WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def load_image(image_file: str, timeout: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES) -> Image.Image:
    """Open a local path (or http(s) URL) as RGB; a missing or non-image file raises ValueError.

    A URL must answer within ``timeout`` seconds, finish sending within about that time
    (see :func:`_download`) and send at most ``max_bytes``; otherwise ValueError names the
    URL and the limit."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout={timeout!r} must be a number of seconds > 0")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes={max_bytes!r} must be an integer >= 1")
    if not isinstance(image_file, str) or not image_file:
        raise ValueError(f"image file {image_file!r} must be a non-empty path or URL")
    if image_file.startswith(("http://", "https://")):
        return _open_rgb(BytesIO(_download(image_file, timeout, max_bytes)), image_file)
    if not os.path.isfile(image_file):
        raise ValueError(f"image file {image_file!r} does not exist")
    return _open_rgb(image_file, image_file)


class _URLImageError(ValueError):
    pass


def _download(url: str, timeout: float, max_bytes: int) -> bytes:
    """The body of ``url``, at most ``max_bytes`` of it. Every wait for the server (connect,
    headers, each read) is limited to ``timeout`` seconds, and so is the whole download,
    checked between reads (a server that trickles bytes is given up on by ``2 * timeout``)."""
    import http.client
    import socket
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    too_slow = f"image URL {url!r} did not send the image within {timeout:g} s (the timeout)"
    too_big = f"image URL {url!r} sends more than {max_bytes} bytes (the limit is {max_bytes / 2 ** 20:g} MiB)"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (user-given URL, as LLaVA's CLI)
            length = (resp.headers.get("Content-Length") or "").strip()
            if length.isdigit() and int(length) > max_bytes:
                raise _URLImageError(f"{too_big}: its Content-Length is {int(length)}")
            chunks, size = [], 0
            while True:
                chunk = resp.read1(min(1 << 16, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise _URLImageError(too_big)
                if time.monotonic() > deadline:
                    raise _URLImageError(too_slow)
    except _URLImageError:
        raise
    except (socket.timeout, TimeoutError) as err:
        raise _URLImageError(too_slow) from err
    except urllib.error.HTTPError as err:
        raise _URLImageError(f"image URL {url!r} answered HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, (socket.timeout, TimeoutError)):
            raise _URLImageError(too_slow) from err
        raise _URLImageError(f"image URL {url!r} could not be fetched: {err.reason}") from err
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise _URLImageError(f"image URL {url!r} could not be fetched: {err!r}") from err
    return b"".join(chunks)


def load_image_from_base64(image: str) -> Image.Image:
    return _open_rgb(BytesIO(base64.b64decode(image)), "<base64 image>")


def _open_rgb(source, name: str) -> Image.Image:
    try:
        with Image.open(source) as img:
            # convert makes a copy that outlives the file; to_rgb scales wide modes first
            return img.convert("RGB") if img.mode == "RGB" else to_rgb(img)
    except UnidentifiedImageError as err:
        raise ValueError(f"{name!r} is not an image PIL can read") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. CMYK, grayscale, palette and RGBA images convert as PIL does;
    16-bit, 32-bit integer (``I``) and float (``F``) images are first scaled to 0..255 by
    their real range (the data's min..max; a constant image becomes black, 0), since a
    plain ``convert`` clips them at 255."""
    if img.mode == "RGB":
        return img
    if img.mode in WIDE_MODES:
        import numpy as np

        data = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(data)
        out = np.zeros(data.shape, dtype=np.uint8)
        if finite.any():
            lo, hi = float(data[finite].min()), float(data[finite].max())
            if hi > lo:
                scaled = np.clip(np.round((data - lo) * (255.0 / (hi - lo))), 0, 255)
                out = np.where(finite, scaled, np.where(data > 0, 255, 0)).astype(np.uint8)
        return Image.fromarray(out).convert("RGB")  # uint8 [H, W] -> "L"
    return img.convert("RGB")


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad the shorter side symmetrically so the image becomes square (LLaVA-1.5 'pad')."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    if isinstance(background_color, (tuple, list)) and len(background_color) == 3 and pil_img.mode != "RGB":
        pil_img = to_rgb(pil_img)  # an RGB background needs an RGB canvas
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def select_best_resolution(original_size: Tuple[int, int], possible_resolutions: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The (width, height) in ``possible_resolutions`` that keeps the most of the image's
    resolution after a fit-inside resize, then wastes the least area."""
    orig_w, orig_h = original_size
    best, best_effective, best_waste = None, -1, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / orig_w, height / orig_h)
        down_w, down_h = int(orig_w * scale), int(orig_h * scale)
        effective = min(down_w * down_h, orig_w * orig_h)
        waste = width * height - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (width, height), effective, waste
    return best


def resize_and_pad_image(image: Image.Image, target_resolution: Tuple[int, int]) -> Image.Image:
    """Fit inside ``target_resolution`` keeping the aspect ratio, centre on black."""
    orig_w, orig_h = image.size
    target_w, target_h = target_resolution
    scale_w, scale_h = target_w / orig_w, target_h / orig_h
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(orig_h * scale_w), target_h)
    else:
        new_h, new_w = target_h, min(math.ceil(orig_w * scale_h), target_w)
    resized = image.resize((new_w, new_h))
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> List[Image.Image]:
    """Raster-order square tiles of side ``patch_size``."""
    width, height = image.size
    return [image.crop((x, y, x + patch_size, y + patch_size))
            for y in range(0, height, patch_size) for x in range(0, width, patch_size)]


def _parse_pinpoints(grid_pinpoints) -> List[Tuple[int, int]]:
    points = ast.literal_eval(grid_pinpoints) if isinstance(grid_pinpoints, str) else grid_pinpoints
    if not points:
        raise ValueError(f"image_grid_pinpoints={grid_pinpoints!r} must be a non-empty list of [width, height]")
    return [tuple(p) for p in points]


def get_anyres_image_grid_shape(image_size: Tuple[int, int], grid_pinpoints, patch_size: int) -> Tuple[int, int]:
    """(columns, rows) of high-resolution tiles that anyres makes for an image of (width, height)."""
    width, height = select_best_resolution(image_size, _parse_pinpoints(grid_pinpoints))
    return width // patch_size, height // patch_size


def process_anyres_image(image: Image.Image, processor, grid_pinpoints) -> torch.Tensor:
    """[1 + tiles, 3, S, S]: the whole image resized to S x S, then the raster tiles."""
    best = select_best_resolution(image.size, _parse_pinpoints(grid_pinpoints))
    padded = resize_and_pad_image(image, best)
    side = processor.crop_size["height"]
    tiles = divide_to_patches(padded, side)
    base = image.resize((processor.size["shortest_edge"],) * 2)
    crops = [base] + tiles
    return torch.stack([processor.preprocess(c, return_tensors="pt")["pixel_values"][0] for c in crops], dim=0)


def process_images(images: Sequence[Image.Image], image_processor, model_cfg) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Preprocess like LLaVA: 'pad' (expand to square with the mean colour), 'anyres', or
    the processor's own resize + centre crop. Stacks when every result has one shape.
    Every image first becomes 8-bit RGB through :func:`to_rgb`."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    images = [to_rgb(img) for img in images]  # 16-bit / float images scaled, not clipped
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        out = [image_processor.preprocess(expand2square(img, background), return_tensors="pt")["pixel_values"][0]
               for img in images]
    elif aspect == "anyres":
        out = [process_anyres_image(img, image_processor, model_cfg.image_grid_pinpoints) for img in images]
    else:
        return image_processor(list(images), return_tensors="pt")["pixel_values"]
    if all(x.shape == out[0].shape for x in out):
        return torch.stack(out, dim=0)
    return out


# ---------------------------------------------------------------- prompts
SPIECE_UNDERLINE = "\u2581"  # sentencepiece's word-start marker


class SlowLlamaTokenizerRules:
    """The token ids that the original LLaVA's tokenizer gives a text.

    The original loads LLaMA/Vicuna/Mistral checkpoints with ``use_fast=False``: transformers
    4.37's slow ``LlamaTokenizer``, i.e. the checkpoint's sentencepiece ``tokenizer.model``
    driven by a few rules of its own. transformers 5.x has no slow Llama tokenizer (its
    ``LlamaTokenizer`` is a tokenizers BPE behind a Metaspace pre-tokenizer), and the two
    disagree on text that starts with a space, e.g. the chunk ``" ASSISTANT:"`` after an
    ``<image>`` tag. This class applies the 4.37 rules to the same ``tokenizer.model``:

    - Added tokens (``<s>``, ``</s>``, ``<unk>``, ``<im_patch>`` ...) are cut out of the text
      first (longest match, left to right; a token's ``lstrip``/``rstrip`` eats the spaces
      beside it); the pieces between them go to sentencepiece one by one.
    - ``legacy=False`` (what LLaVA's checkpoints say): sentencepiece runs without its dummy
      prefix; a "\u2581" is put in front of the whole text (after turning any "\u2581" in it into a
      space), and a piece between added tokens that starts with a space keeps that space as
      a word start. A text that begins with a special token loses the lone "\u2581" in front
      of it. So ``" A"`` gives "\u2581" + "\u2581A"-style pieces where 5.x gives "\u2581A".
    - ``legacy=True`` (also what 4.37 assumes when ``tokenizer_config.json`` names no
      ``legacy``): every piece between added tokens is encoded by sentencepiece as is.
    - BOS / EOS are added as ``add_bos_token`` / ``add_eos_token`` say.
    - "Special" (for the lone-"▁" rule) are the tokens of the special-tokens map and the
      special tokens added after loading; those the files brought are not.

    Added tokens' ids and the special tokens come from the 5.x tokenizer it is made from,
    so tokens added after loading (LLaVA's ``<im_patch>``) are honoured."""

    _processors: Dict[tuple, Any] = {}  # (path, file stamp, legacy, sp_model_kwargs) -> processor

    def __init__(self, tokenizer, vocab_file: str, legacy: bool, sp_model_kwargs: Optional[dict] = None,
                 add_bos_token: bool = True, add_eos_token: bool = False, saved_added_tokens: Sequence[str] = ()):
        self.legacy = bool(legacy)
        self.processor = self._processor(vocab_file, self.legacy, sp_model_kwargs or {})
        decoder = tokenizer.added_tokens_decoder  # id -> AddedToken, the specials included
        self.added: Dict[str, int] = {str(tok): idx for idx, tok in decoder.items()}
        self.strip = {str(tok): (bool(getattr(tok, "lstrip", False)), bool(getattr(tok, "rstrip", False)))
                      for tok in decoder.values()}
        # 4.37 counts a token among its special ones when the special-tokens map names it, or
        # when add_tokens(..., special_tokens=True) added it after loading (LLaVA's <im_patch>);
        # one that came with the saved files is not.
        saved = set(saved_added_tokens)
        self.special = set(tokenizer.all_special_tokens) | {
            str(tok) for tok in decoder.values() if getattr(tok, "special", False) and str(tok) not in saved}
        self.unk_token = str(tokenizer.unk_token if tokenizer.unk_token is not None else "<unk>")
        self.unk_length = len(self.processor.encode(self.unk_token, out_type=str))
        self.bos = tokenizer.bos_token_id if add_bos_token else None
        self.eos = tokenizer.eos_token_id if add_eos_token else None
        ordered = sorted(self.added, key=len, reverse=True)  # the longest added token wins a tie
        self.pattern = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None

    @classmethod
    def _processor(cls, vocab_file: str, legacy: bool, sp_model_kwargs: dict):
        key = (os.path.abspath(vocab_file), _stamp(vocab_file), legacy, repr(sorted(sp_model_kwargs.items())))
        if key not in cls._processors:
            import sentencepiece as spm

            proc = spm.SentencePieceProcessor(**sp_model_kwargs)
            with open(vocab_file, "rb") as f:
                proto = f.read()
            if not legacy:
                from sentencepiece import sentencepiece_model_pb2

                model = sentencepiece_model_pb2.ModelProto.FromString(proto)
                model.normalizer_spec.add_dummy_prefix = False
                proto = model.SerializeToString()
            proc.LoadFromSerializedProto(proto)
            cls._processors[key] = proc
        return cls._processors[key]

    def _split(self, text: str) -> List[str]:
        """``text`` cut around the added tokens: [text, token, text, token, ..., text]."""
        parts = self.pattern.split(text) if self.pattern is not None else [text]
        for i in range(1, len(parts), 2):
            lstrip, rstrip = self.strip.get(parts[i], (False, False))
            if rstrip and parts[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
            if lstrip and parts[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
        return parts

    def _pieces(self, text: str) -> List[str]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.processor.encode(text, out_type=str)
        # Without a dummy prefix sentencepiece would drop the leading word start: encode
        # behind the unk token's text and cut that off again.
        pieces = self.processor.encode(self.unk_token + text, out_type=str)
        return pieces[self.unk_length:] if len(pieces) >= self.unk_length else pieces

    def tokens(self, text: str) -> List[str]:
        """The pieces of ``text`` (no BOS/EOS)."""
        prefixed = not self.legacy and len(text) > 0
        if prefixed:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        out: List[str] = []
        for i, part in enumerate(self._split(text)):
            if not part:
                continue
            out.extend([part] if i % 2 else self._pieces(part))
        if prefixed and len(out) > 1 and out[0] == SPIECE_UNDERLINE and out[1] in self.special:
            out = out[1:]
        return out

    def __call__(self, text: str) -> List[int]:
        """The ids of ``text``, with BOS (and EOS) as the tokenizer adds them."""
        ids = [self.added[p] if p in self.added else self.processor.piece_to_id(p) for p in self.tokens(text)]
        if self.bos is not None:
            ids = [self.bos] + ids
        if self.eos is not None:
            ids = ids + [self.eos]
        return ids


_SLOW_RULES_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def slow_llama_rules(tokenizer) -> Optional[SlowLlamaTokenizerRules]:
    """The 4.37 slow-tokenizer rules for a LLaMA-family sentencepiece tokenizer, or None for
    every other tokenizer (those keep their own behaviour) and when sentencepiece is not
    installed. "LLaMA-family" means what the original's ``use_fast=False`` load would make a
    slow ``LlamaTokenizer`` of: a ``tokenizer.model`` whose ``tokenizer_config.json`` names
    ``LlamaTokenizer(Fast)`` (5.x may load such a folder as a generic ``TokenizersBackend``,
    e.g. beside a ``model_type: llava`` config). Cached per tokenizer and rebuilt when its
    added or special tokens change."""
    vocab_file = sentencepiece_model_file(tokenizer)
    if vocab_file is None:
        return None
    config_file = os.path.join(os.path.dirname(vocab_file), "tokenizer_config.json")
    key = (vocab_file, _stamp(vocab_file), _stamp(config_file), len(tokenizer), tuple(tokenizer.all_special_tokens),
           getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None))
    try:
        cached = _SLOW_RULES_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is not None and cached[0] == key:
        return cached[1]
    settings = _slow_tokenizer_settings(tokenizer, vocab_file)
    rules = None
    if settings["tokenizer_class"] in ("LlamaTokenizer", "LlamaTokenizerFast") and _has_sentencepiece():
        rules = SlowLlamaTokenizerRules(tokenizer, vocab_file, settings["legacy"], settings["sp_model_kwargs"],
                                        settings["add_bos_token"], settings["add_eos_token"],
                                        _saved_added_tokens(vocab_file))
    try:
        _SLOW_RULES_CACHE[tokenizer] = (key, rules)
    except TypeError:
        pass
    return rules


def _stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _has_sentencepiece() -> bool:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return True


def sentencepiece_model_file(tokenizer) -> Optional[str]:
    """The sentencepiece ``tokenizer.model`` a tokenizer was loaded from (else one in its
    local folder), or None."""
    init_kwargs = getattr(tokenizer, "init_kwargs", None) or {}
    candidates = [getattr(tokenizer, "vocab_file", None), init_kwargs.get("vocab_file")]
    name = getattr(tokenizer, "name_or_path", None)
    if isinstance(name, str) and name and os.path.isdir(name):
        candidates.append(os.path.join(name, "tokenizer.model"))
    for path in candidates:
        if isinstance(path, str) and path.endswith(".model") and os.path.isfile(path):
            return path
    return None


_JSON_CACHE: Dict[tuple, Any] = {}  # (path, file stamp) -> content


def _read_json(path: str):
    """A JSON file's content (cached while unchanged), or None when it is missing or bad."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    key = (path, stamp)
    if key not in _JSON_CACHE:
        try:
            with open(path) as f:
                _JSON_CACHE[key] = json.load(f)
        except (OSError, ValueError):
            _JSON_CACHE[key] = None
    return _JSON_CACHE[key]


def _saved_tokenizer_config(vocab_file: str) -> Dict[str, Any]:
    config = _read_json(os.path.join(os.path.dirname(vocab_file), "tokenizer_config.json"))
    return config if isinstance(config, dict) else {}


def _saved_added_tokens(vocab_file: str) -> List[str]:
    """The added tokens that the files beside ``tokenizer.model`` declare (tokenizer_config's
    ``added_tokens_decoder``, ``added_tokens.json``, tokenizer.json's ``added_tokens``)."""
    folder = os.path.dirname(vocab_file)
    decoder = _saved_tokenizer_config(vocab_file).get("added_tokens_decoder") or {}
    out = [t.get("content", "") if isinstance(t, dict) else str(t) for t in decoder.values()]
    added_json = _read_json(os.path.join(folder, "added_tokens.json"))
    out += list(added_json) if isinstance(added_json, dict) else []
    fast = _read_json(os.path.join(folder, "tokenizer.json"))
    out += [t.get("content", "") for t in (fast.get("added_tokens") or []) if isinstance(t, dict)] \
        if isinstance(fast, dict) else []
    return out


def _slow_tokenizer_settings(tokenizer, vocab_file: str) -> Dict[str, Any]:
    """What 4.37 would build the slow tokenizer with: the class ``tokenizer_config.json``
    beside ``tokenizer.model`` names (else the tokenizer's own), ``legacy`` (an unnamed one is
    True in 4.37), ``sp_model_kwargs``, and whether BOS / EOS are added (as the files say,
    else as the tokenizer does)."""
    saved = _saved_tokenizer_config(vocab_file)
    init_kwargs = getattr(tokenizer, "init_kwargs", None) or {}

    def pick(name, default):
        for source in (init_kwargs, saved):
            if source.get(name) is not None:
                return source[name]
        return default

    add_bos, add_eos = pick("add_bos_token", None), pick("add_eos_token", None)
    if add_bos is None or add_eos is None:
        # Not in the files: what the tokenizer does (5.x's add_bos_token attribute can say
        # False while its post-processor adds BOS).
        probe = list(tokenizer("a").input_ids)
        if add_bos is None:
            add_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
        if add_eos is None:
            add_eos = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    return {
        "tokenizer_class": saved.get("tokenizer_class") or type(tokenizer).__name__,
        "legacy": bool(pick("legacy", True)),
        "sp_model_kwargs": dict(pick("sp_model_kwargs", {}) or {}),
        "add_bos_token": bool(add_bos),
        "add_eos_token": bool(add_eos),
    }


def tokenize_text(text: str, tokenizer) -> List[int]:
    """The ids (BOS included, as the tokenizer adds it) that the original LLaVA's tokenizer
    gives ``text``: the 4.37 slow rules for LLaMA sentencepiece checkpoints
    (:class:`SlowLlamaTokenizerRules`), ``tokenizer(text).input_ids`` for any other."""
    rules = slow_llama_rules(tokenizer)
    return rules(text) if rules is not None else list(tokenizer(text).input_ids)


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenize ``prompt`` with every ``<image>`` replaced by ``image_token_index``.

    As the original: the text between the tags is tokenized chunk by chunk (each chunk as
    :func:`tokenize_text` does, so LLaMA checkpoints get the ids of the slow tokenizer the
    original loads) and the BOS every chunk gets is kept only for the first one."""
    rules = slow_llama_rules(tokenizer)
    encode = rules if rules is not None else (lambda chunk: list(tokenizer(chunk).input_ids))
    chunks = [encode(chunk) for chunk in prompt.split("<image>")]
    bos = tokenizer.bos_token_id
    input_ids: List[int] = list(chunks[0])
    for chunk in chunks[1:]:
        input_ids.append(image_token_index)
        input_ids.extend(chunk[1:] if bos is not None and chunk[:1] == [bos] else chunk)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors={return_tensors!r}; accepted: None or 'pt'")


def get_model_name_from_path(model_path: str) -> str:
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-"):
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a sequence once its generated text ends with one of ``keywords`` (e.g. ``</s>``).

    Returns one bool per sequence (transformers 5.x contract). ``input_ids`` is accepted
    for compatibility with LLaVA's signature; our ``generate`` yields new tokens only, so
    every position of ``output_ids`` is generated text."""

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: Optional[torch.Tensor] = None):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword, add_special_tokens=False).input_ids
            if ids:
                self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(k) for k in self.keyword_ids), default=1)

    def __call__(self, output_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        done = torch.zeros(output_ids.shape[0], dtype=torch.bool, device=output_ids.device)
        for row in range(output_ids.shape[0]):
            ids = output_ids[row]
            if any(ids.shape[0] >= len(k) and torch.equal(ids[-len(k):].cpu(), k) for k in self.keyword_ids):
                done[row] = True
                continue
            tail = self.tokenizer.decode(ids[-(self.max_keyword_len + 3):], skip_special_tokens=False)
            done[row] = any(tail.endswith(k) or k in tail for k in self.keywords)
        return done
