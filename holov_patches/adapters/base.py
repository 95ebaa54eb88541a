"""What every transformers adapter shares: prune the image tokens of the prefill and keep
ids, masks and positions consistent with the pruned sequence.

transformers' multimodal models (``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``) scatter the
image features into the image placeholder tokens of ``input_ids`` and raise "Image features
and image tokens do not match" on any mismatch. An adapter wraps two methods of the
*instance* (never the class), and ``remove()`` restores both:

- the base model's ``get_image_features`` (``generate`` calls it before the prefill to
  pre-encode images; ``forward`` calls it on ``pixel_values``): it runs unchanged while a
  temporary pre-hook captures the vision-layer input the pruning signal is computed from
  (SDPA stays on), then the family prunes every image with the one registry call
  (:func:`holov_patches.api.prune_visual_tokens`). The output is returned UNPRUNED, so
  ``generate``'s own bookkeeping (expanding images for beams, counting placeholders) still
  works; each image's result (kept vectors, and for each the offset inside the image's
  placeholder run whose original position it keeps) is remembered against that image's
  feature tensor, until the next ``get_image_features`` call or ``remove()``.
- ``forward``: on the prefill (images present) it looks those results up, builds one
  column map (:func:`compact_columns`), gathers ``input_ids``, ``attention_mask``,
  ``labels`` and token-type ids through it (rows left-padded to a common length), gives the
  pruned sequence its position ids (below), and calls the original forward with the kept
  vectors as ``mm_encoder_outputs``. Decoding steps on the prefill's cache still receive
  ``generate``'s original-length ``attention_mask``: it is mapped through the same column map.

Positions follow ``PruningConfig.position_ids`` as resolved by ``keeps_original_positions``
(None: 'original' for improved HoloV, 'compact' otherwise; a family may refuse a setting,
see :meth:`SequencePruningAdapter.resolve_positions`), the adapter's ``positions``:

- 'original': each kept vector takes the position of the placeholder whose offset it keeps
  (gaps), the text keeps its own; the positions are the ones the caller gave (``generate``'s)
  or the unpatched model's for the unpruned ids. Decoding continues from the ORIGINAL
  positions (``generate``'s own continuation; supplied that way when a caller gives none).
  So the KV cache holds the pruned length while RoPE sees the positions the tokens had
  before pruning.
- 'compact' (the authors' LLaVA code): the pruned sequence is numbered as the unpatched
  model numbers a sequence of the pruned length: without ``position_ids`` 0..L'-1 (as its
  forward does), with them (``generate``: cumsum of the mask) each column's given position
  minus the placeholders dropped before it in its row, which is ``generate``'s own numbering
  of the pruned ids (per row 0..T'-1 over the real tokens, left pads as ``generate`` sets
  them). Kept vectors take their slot's position, in sequence order, whatever order the
  pruner returned. Decoding continues from T': position ids given in the unpruned numbering
  (``generate``'s) are moved down by each row's pruned count; none given continue from the
  last prompt position + 1.

Either way, with K = all tokens the run is bit-identical to the unpatched model.
"""
from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from holov_patches.api import pre_llm_entry, prune_visual_tokens
from holov_patches.config import PruningConfig
from holov_patches.record import PruningRecord

LABEL_IGNORE = -100


@dataclass
class PrunedImage:
    """One image's pruning result.

    vectors [n, D]  what the LLM sees for the image, in sequence order
    offsets [n]     int64 offset inside the image's placeholder run whose original position
                    (and label) each vector takes; -1 marks a zero pad (faithful HoloV),
                    which takes the position of the run's last placeholder
    index [K]       the pruner's kept positions in the image's own token list (newlines not
                    counted), ``num_tokens`` that list's length, ``grid`` its 2-D layout
    """

    vectors: torch.Tensor
    offsets: torch.Tensor
    index: torch.Tensor
    num_tokens: int
    grid: Optional[Tuple[int, int]] = None
    parts: Optional[List[Tuple[int, int]]] = None  # (rows, cols) of each 2-D part of a multi-part image


# ---------------------------------------------------------------- column maps
def compact_columns(image_mask: torch.Tensor, run_lengths: Sequence[int], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
    """image_mask [B, L] (True at image placeholders) -> source [B, L'] column map.

    Image i owns the i-th run of ``run_lengths[i]`` placeholders in row-major order. Its
    first ``len(offsets[i])`` placeholders stay (they receive the kept vectors in order) and
    take their source column from ``offsets[i]``; the rest are dropped. Text columns stay
    and map to themselves. Shorter rows are left-padded with -1."""
    batch, length = image_mask.shape
    device = image_mask.device
    runs = torch.as_tensor(list(run_lengths), dtype=torch.long, device=device)  # [I]
    flat = image_mask.reshape(-1).nonzero().squeeze(1)  # [T] row-major index of every placeholder
    if flat.numel() != int(runs.sum()):
        raise ValueError(f"input_ids hold {flat.numel()} image tokens but the images need {int(runs.sum())} "
                         f"(runs {list(run_lengths)}): Image features and image tokens do not match")
    if len(offsets) != runs.numel():
        raise ValueError(f"got kept offsets for {len(offsets)} images, expected {runs.numel()}")
    if flat.numel() == 0:
        return torch.arange(length, device=device).expand(batch, length).clone()
    starts = runs.cumsum(0) - runs  # [I] index into flat of each run's first placeholder
    ends = starts + runs - 1
    if bool(((flat[ends] - flat[starts]) != runs - 1).any()):
        raise ValueError("each image's tokens must form one contiguous run inside one row of input_ids")
    keep_counts = torch.as_tensor([int(o.numel()) for o in offsets], dtype=torch.long, device=device)  # [I]
    if bool((keep_counts > runs).any()):
        raise ValueError(f"an image keeps more tokens than it has: keep {keep_counts.tolist()} of {runs.tolist()}")
    image_of = torch.repeat_interleave(torch.arange(runs.numel(), device=device), runs)  # [T]
    ordinal = torch.arange(flat.numel(), device=device) - starts[image_of]  # [T] position inside the run
    is_slot = ordinal < keep_counts[image_of]  # [T] placeholders that stay
    slot_image = image_of[is_slot]  # [sum K] image of each slot, slots in image order
    off = torch.cat([o.to(device=device, dtype=torch.long).reshape(-1) for o in offsets])  # [sum K]
    if bool(((off < -1) | (off >= runs[slot_image])).any()):
        raise ValueError("kept offsets must lie in [0, run length) or be -1 for a zero pad")
    off = torch.where(off >= 0, off, runs[slot_image] - 1)  # a zero pad takes its run's last position
    source_flat = flat[starts[slot_image] + off]  # [sum K]

    keep = ~image_mask  # [B, L] text columns stay
    keep.view(-1)[flat[is_slot]] = True
    source = torch.arange(length, device=device).expand(batch, length).clone()  # [B, L]
    source.view(-1)[flat[is_slot]] = source_flat % length
    lengths = keep.sum(1)  # [B]
    new_length = int(lengths.max())
    dest = (new_length - lengths)[:, None] + keep.long().cumsum(1) - 1  # [B, L] left-padded target column
    dest = torch.where(keep, dest, torch.full_like(dest, new_length))  # dropped -> scratch column
    out = torch.full((batch, new_length + 1), -1, dtype=torch.long, device=device)
    out.scatter_(1, dest, torch.where(keep, source, torch.full_like(source, -1)))
    return out[:, :new_length]


def compact_positions(positions: Optional[torch.Tensor], image_mask: torch.Tensor, run_lengths: Sequence[int],
                      keep_counts: Sequence[int]) -> torch.Tensor:
    """The 'compact' position ids [B, L'] of the sequence that :func:`compact_columns` keeps
    (image i keeps the first ``keep_counts[i]`` of its placeholders).

    ``positions`` [B or 1, L] given by the caller (1-D RoPE ids of the unpruned ids): each kept
    column takes its own given position minus the placeholders dropped before it in its
    row; for ``generate``'s ids (cumsum of the mask - 1) that is exactly ``generate``'s
    numbering of the pruned ids. ``positions`` None: 0..L'-1 in every row, what the
    unpatched forward uses without position ids. Added left pads get 0 (they are masked)."""
    batch, length = image_mask.shape
    device = image_mask.device
    own = compact_columns(image_mask, run_lengths, [torch.arange(k, device=device) for k in keep_counts])  # [B, L']
    if positions is None:
        return torch.arange(own.shape[1], device=device).expand(batch, own.shape[1])
    if positions.dim() != 2:
        raise ValueError(f"compact positions are 1-D position ids [B, L]; got shape {tuple(positions.shape)}")
    kept = torch.zeros(batch, length + 1, dtype=torch.bool, device=device)
    kept.scatter_(1, torch.where(own >= 0, own, length), True)  # added pads write into the scratch column
    dropped = (image_mask & ~kept[:, :length]).long()  # [B, L] placeholders that are not kept
    before = dropped.cumsum(1) - dropped  # [B, L] dropped strictly before each column
    return gather_columns(positions.to(device) - before, own, 0)


def gather_columns(x: torch.Tensor, source: torch.Tensor, fill) -> torch.Tensor:
    """x [..., B or 1, L] -> [..., B, L'] taking column source[b, j] (``fill`` where it is -1)."""
    batch = source.shape[0]
    x = x.expand(*x.shape[:-2], batch, x.shape[-1])
    index = source.clamp(min=0).to(x.device).expand(*x.shape[:-2], *source.shape)
    out = x.gather(-1, index)
    return out.masked_fill((source < 0).to(x.device), fill)


# ---------------------------------------------------------------- helpers for the families
@contextlib.contextmanager
def capture_input(module: nn.Module) -> Iterator[Dict[str, Any]]:
    """Record the (args, kwargs) of ``module``'s calls with a forward pre-hook that exists
    only inside the ``with`` block (nothing stays registered on the model)."""
    seen: Dict[str, Any] = {"calls": 0}

    def hook(_module, args, kwargs):
        seen["calls"] += 1
        seen["args"], seen["kwargs"] = args, kwargs

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def captured_argument(seen: Dict[str, Any], name: str, position: int, where: str):
    if seen["calls"] != 1:
        raise RuntimeError(f"expected exactly one call of {where} during the vision forward, saw {seen['calls']}")
    args, kwargs = seen["args"], seen["kwargs"]
    return kwargs[name] if name in kwargs else args[position]


def prune_part(tokens: torch.Tensor, signal: torch.Tensor, config: PruningConfig, keep: Optional[int] = None,
               grid: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, N, D], signal [B, N] -> (kept [B, K, D], index [B, K] int64) through the one
    registry call. ``keep`` overrides the config's budget (LLaVA-NeXT splits one image's K
    between its base and high-res parts); keep=0 keeps nothing."""
    attn = signal.float() if "cls_attn" in pre_llm_entry(config).needs else None  # only what the method declares
    kept, index = prune_visual_tokens(tokens, attn, config, grid=grid, keep=keep)
    return kept, index.to(torch.long)


def bind_arguments(signature: inspect.Signature, args, kwargs) -> Dict[str, Any]:
    """Call arguments by name, with ``**kwargs`` flattened in (``past_key_values`` -> ``cache``)."""
    if "past_key_values" in kwargs and "cache" in signature.parameters and "cache" not in kwargs:
        kwargs = dict(kwargs)
        kwargs["cache"] = kwargs.pop("past_key_values")
    arguments = dict(signature.bind(*args, **kwargs).arguments)
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments


def _wrap(original: Callable, body: Callable) -> Callable:
    """A function with ``original``'s signature (transformers inspects it) that runs ``body``."""
    signature = inspect.signature(original)

    def wrapper(*args, **kwargs):
        return body(original, signature, args, kwargs)

    wrapper.__wrapped__ = original
    wrapper.__doc__ = original.__doc__
    wrapper.__name__ = getattr(original, "__name__", "wrapper")
    return wrapper


class _InstancePatch:
    """Replace one bound method on one module instance; undo restores exactly what was there."""

    def __init__(self, module: nn.Module, name: str, body: Callable):
        self.module, self.name = module, name
        self.had_instance_attr = name in module.__dict__
        self.previous = getattr(module, name)
        self.wrapper = _wrap(self.previous, body)
        setattr(module, name, self.wrapper)

    def undo(self) -> None:
        if self.module.__dict__.get(self.name) is not self.wrapper:
            raise RuntimeError(f"{type(self.module).__name__}.{self.name} was replaced after HoloV pruning was applied; "
                               "remove that wrapper first")
        if self.had_instance_attr:
            setattr(self.module, self.name, self.previous)
        else:
            delattr(self.module, self.name)


# ---------------------------------------------------------------- the instance seam
class SequencePruningAdapter:
    """Base class of the transformers adapters.

    A family subclass supplies:
    - ``check_model(model)``: raise ValueError when the instance lacks what it needs;
    - ``signal_module(arguments)``: the module whose input carries the pruning signal;
    - ``prune_encoded(arguments, outputs, seen) -> List[PrunedImage]`` (one per image of
      ``outputs.pooler_output``), given the captured calls ``seen``;
    - ``encode_images(arguments)``: call the base model's get_image_features exactly as the
      unpatched forward does on ``pixel_values``;
    - ``original_positions(arguments)``: the position ids the unpatched model would use;
    - optional ``resolve_positions(config)`` ('compact' or 'original'; a family that cannot
      number a pruned sequence one way raises there, at ``apply`` time);
    - optional ``extra_columns`` (other [B, L] inputs to gather) and ``image_inputs`` (the
      forward arguments that ``encode_images`` consumes).
    """

    family = ""
    extra_columns: Tuple[Tuple[str, int], ...] = ()  # (argument name, fill value for added pads)
    image_inputs: Tuple[str, ...] = ("pixel_values",)

    def __init__(self, model: nn.Module, config: PruningConfig):
        self.model = model
        self.config = config
        self.check_model(model)
        self.base = model.base_model
        self.image_token_id = int(model.config.image_token_id)
        text_config = model.config.get_text_config()
        pad = getattr(text_config, "pad_token_id", None)
        # id written into the left pads added to rows that lost fewer tokens (masked out; never the image token)
        self.pad_token_id = int(pad) if pad is not None and int(pad) != self.image_token_id else int(self.image_token_id == 0)
        self.positions = self.resolve_positions(config)  # 'compact' or 'original'
        self.last_prefill: Optional[PruningRecord] = None
        self._position_shift: Optional[Tuple[PruningRecord, torch.Tensor]] = None  # compact: unpruned - pruned numbering
        self._results: Dict[int, Tuple[Callable[[], Any], PrunedImage]] = {}
        self._patches: List[_InstancePatch] = []

    # -- family hooks --------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def signal_module(self, arguments: Dict[str, Any]) -> nn.Module:  # pragma: no cover - overridden
        raise NotImplementedError

    def prune_encoded(self, arguments: Dict[str, Any], outputs, seen: Dict[str, Any]) -> List[PrunedImage]:  # pragma: no cover
        raise NotImplementedError

    def encode_images(self, arguments: Dict[str, Any]):  # pragma: no cover - overridden
        raise NotImplementedError

    def original_positions(self, arguments: Dict[str, Any]) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def resolve_positions(self, config: PruningConfig) -> str:
        """How the pruned sequence is numbered: the config's resolved setting."""
        return "original" if config.keeps_original_positions else "compact"

    # -- install / remove ----------------------------------------------------
    def install(self) -> None:
        self._patches.append(_InstancePatch(self.base, "get_image_features", self._get_image_features))
        try:
            self._patches.append(_InstancePatch(self.model, "forward", self._forward))
        except Exception:
            self._patches.pop().undo()
            raise

    def remove(self) -> None:
        for patch in reversed(self._patches):
            patch.undo()
        self._patches.clear()
        self._results.clear()
        self.last_prefill = None
        self._position_shift = None

    # -- get_image_features: prune and remember ------------------------------
    def _get_image_features(self, original, signature, args, kwargs):
        arguments = bind_arguments(signature, args, kwargs)
        with capture_input(self.signal_module(arguments)) as seen:
            outputs = original(*args, **kwargs)
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError("HoloV pruning needs get_image_features(..., return_dict=True) (got a tuple)")
        results = self.prune_encoded(arguments, outputs, seen)
        self._results.clear()  # only the latest encoding is kept (bounded memory; older features raise loudly)
        if len(results) != len(pooled):
            raise RuntimeError(f"pruned {len(results)} images, the features hold {len(pooled)}")
        for features, result in zip(pooled, results):
            self._remember(features, result)
        return outputs

    def _remember(self, features: torch.Tensor, result: PrunedImage) -> None:
        # keyed by the feature tensor's identity (checked through a weak reference, so a
        # recycled id never matches): generate's expansion for beams repeats the same tensors
        self._results[id(features)] = (weakref.ref(features), result)

    def _lookup(self, features: torch.Tensor) -> Optional[PrunedImage]:
        entry = self._results.get(id(features))
        return entry[1] if entry is not None and entry[0]() is features else None

    # -- forward -------------------------------------------------------------
    def _forward(self, original, signature, args, kwargs):
        arguments = bind_arguments(signature, args, kwargs)
        if arguments.get("pixel_values") is not None:
            if arguments.get("mm_encoder_outputs") is not None:
                raise ValueError("pass pixel_values or mm_encoder_outputs, not both")
            encoded = {"image": self.encode_images(arguments)}  # what the unpatched forward computes itself
            for name in self.image_inputs:
                arguments[name] = None
            arguments["mm_encoder_outputs"] = encoded
        encoded = arguments.get("mm_encoder_outputs") or {}
        if encoded.get("image") is not None:
            return self._prefill(original, arguments, encoded)
        record = self.last_prefill
        cache = arguments.get("cache")
        if record is not None and cache is not None and record.cache_ref is not None and record.cache_ref() is cache:
            self._continue(arguments, record, cache)
        return original(**arguments)

    def _prefill(self, original, arguments: Dict[str, Any], encoded: Dict[str, Any]):
        pooled = list(encoded["image"].pooler_output)
        results = [self._lookup(features) for features in pooled]
        if any(result is None for result in results):
            raise ValueError("these image features were not computed by this model's get_image_features while pruning "
                             "was applied (user-supplied mm_encoder_outputs, or a chunked prefill that sliced them); "
                             "pass pixel_values instead")
        input_ids = arguments.get("input_ids")
        if input_ids is None:
            raise ValueError("HoloV pruning needs input_ids with the image placeholder tokens (got inputs_embeds only)")
        cache = arguments.get("cache")
        if cache is not None and cache.get_seq_length() > 0:
            raise NotImplementedError("pruning a prefill that continues a non-empty cache (a later image turn) is not "
                                      "supported; start from an empty cache")
        batch, length = input_ids.shape
        given = arguments.get("position_ids")
        positions = given if given is not None else self.original_positions(arguments)
        attention_mask = arguments.get("attention_mask")
        if attention_mask is None:  # an explicit mask also keeps the gapped positions from reading as packed sequences
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=input_ids.device)
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2-D [B, L] when pruning, got shape {tuple(attention_mask.shape)}")

        offsets = [result.offsets for result in results]
        run_lengths = [int(features.shape[0]) for features in pooled]
        source = compact_columns(input_ids == self.image_token_id, run_lengths, offsets)

        new = dict(arguments)
        new["input_ids"] = gather_columns(input_ids, source, self.pad_token_id)
        new["attention_mask"] = gather_columns(attention_mask, source, 0)
        kept_positions = gather_columns(positions, source, 0)  # 'original': each kept token's own position
        if self.positions == "compact":
            new["position_ids"] = compact_positions(given, input_ids == self.image_token_id, run_lengths,
                                                    [int(o.numel()) for o in offsets])
        else:
            new["position_ids"] = kept_positions
        if arguments.get("labels") is not None:
            new["labels"] = gather_columns(arguments["labels"], source, LABEL_IGNORE)
        for name, fill in self.extra_columns:
            if arguments.get(name) is not None:
                new[name] = gather_columns(arguments[name], source, fill)
        pruned_output = type(encoded["image"])(pooler_output=[result.vectors for result in results])
        new["mm_encoder_outputs"] = {**encoded, "image": pruned_output}

        outputs = original(**new)
        out_cache = getattr(outputs, "cache", None)
        record = PruningRecord(
            source=source, original_length=length, pruned_length=source.shape[1], position_ids=new["position_ids"],
            cache_ref=weakref.ref(out_cache) if out_cache is not None else None,
        )
        for result, span in zip(results, run_lengths):
            record.add_image(result.index, result.num_tokens, result.grid, result.offsets, span, result.parts)
        self.last_prefill = record
        # compact: how far each row's numbering moved down (given decoding positions are in the unpruned numbering)
        self._position_shift = ((record, kept_positions[..., -1:] - new["position_ids"][..., -1:])
                                if self.positions == "compact" else None)
        return outputs

    def _continue(self, arguments: Dict[str, Any], record: PruningRecord, cache) -> None:
        """A decoding step on the cache of the last pruned prefill: map the original-length
        mask onto the pruned cache; positions: none given continue from the prefill's last
        position + 1; given ones (``generate``'s, in the unpruned numbering) are kept for
        'original' and moved down by the row's pruned count for 'compact'."""
        ids = arguments.get("input_ids")
        step = (ids if ids is not None else arguments["inputs_embeds"]).shape[1]
        batch = record.source.shape[0]
        done = cache.get_seq_length() - record.pruned_length  # tokens decoded since the prefill
        expected = record.original_length + done + step
        mask = arguments.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, expected, dtype=torch.long, device=record.source.device)
        if mask.dim() != 2 or mask.shape[1] != expected:
            raise ValueError(f"decoding after a pruned prefill expects a 2-D attention_mask of the original length "
                             f"{expected} (prompt {record.original_length} + {done} decoded + {step} new), got "
                             f"{tuple(mask.shape)}")
        head = gather_columns(mask[:, :record.original_length], record.source, 0)
        arguments["attention_mask"] = torch.cat([head, mask[:, record.original_length:]], dim=1)
        if arguments.get("position_ids") is None:
            last = record.position_ids[..., -1:]  # [..., B, 1] position of each row's last prompt column
            steps = torch.arange(done + 1, done + 1 + step, device=last.device)
            arguments["position_ids"] = last + steps
        elif self._position_shift is not None and self._position_shift[0] is record:
            arguments["position_ids"] = arguments["position_ids"] - self._position_shift[1].to(arguments["position_ids"].device)


__all__ = [
    "PrunedImage", "SequencePruningAdapter", "compact_columns", "compact_positions", "gather_columns",
    "capture_input", "captured_argument", "prune_part", "bind_arguments", "LABEL_IGNORE",
]
