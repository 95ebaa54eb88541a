"""LLaVA's multimodal glue: encode images, (optionally) prune the visual tokens through
the holov_patches registry, and splice them into the text embeddings.

``prepare_inputs_labels_for_multimodal`` keeps the original return contract:
``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from holov_patches import PruningConfig, list_pruners, prune_visual_tokens
from holov_patches.api import pre_llm_entry
from holov_patches.registry import get_entry
from holov_patches.record import PruningRecord
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import get_anyres_image_grid_shape
from llava.model.llm_pruning import LLMPruningHooks
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_encoder.clip_encoder import CLIP_SPACE_INPUTS, TOWER_INPUTS
from llava.model.multimodal_projector.builder import build_vision_projector

@dataclass
class ImageTokens:
    """One image's tokens as the LLM receives them, and the position each had in the
    image's unpruned span (``span`` embeddings, newlines included)."""
    tokens: torch.Tensor  # [n, D]
    offsets: torch.Tensor  # [n] int64 in [0, span)
    span: int

    @classmethod
    def whole(cls, tokens: torch.Tensor) -> "ImageTokens":
        return cls(tokens, torch.arange(tokens.shape[0], device=tokens.device), tokens.shape[0])

    @classmethod
    def kept(cls, tokens: torch.Tensor, index: torch.Tensor, span: int) -> "ImageTokens":
        return cls(tokens, _offsets_in_span(index, None, span), span)


def _span_with_newlines(num_tokens: int, newline_rows) -> int:
    """Embeddings of an unpruned image: its tokens plus the newlines LLaVA-NeXT inserts."""
    if newline_rows is None:
        return num_tokens
    _, height, _ = newline_rows
    return num_tokens + (height if height > 0 else 1)


def _offsets_in_span(index: torch.Tensor, newline_rows, span: int) -> torch.Tensor:
    """Position in the unpruned span of each kept token (index into the newline-free token
    list); a row without a single source (a zero pad, index -1, or a merged / [CLS] row,
    index -2) takes the span's last position."""
    offsets = index.clone()
    if newline_rows is not None and newline_rows[1] > 0:
        n_base, _, width = newline_rows
        hi = index - n_base
        offsets = torch.where(index >= n_base, n_base + (hi // width) * (width + 1) + hi % width, index)
    return torch.where(index >= 0, offsets, torch.full_like(offsets, span - 1))


# What this path computes for a method: the tower's signals and, loaded on first use from the
# tower's own CLIP checkpoint, CLIP's image / text embeddings (the latter of ``pruning_text``).
LLAVA_INPUTS = TOWER_INPUTS + CLIP_SPACE_INPUTS


def llava_methods() -> List[str]:
    """The pre-LLM methods this path runs: those whose declared inputs it computes."""
    return [n for n in list_pruners(stage="pre_llm") if set(get_entry(n).needs) <= set(LLAVA_INPUTS)]


def instruction_texts(pruning_text, count: int, method: str) -> List[str]:
    """``pruning_text`` (one str for every image, or a list of one str per image) -> ``count`` texts.

    ``pruning_text`` is the instruction a text-conditioned method (CDPruner) scores the
    patches against: the question, without the answer-format sentence (our entry points set it,
    see ``llava.eval.pruning_text``)."""
    if pruning_text is None:
        raise ValueError(f"method {method!r} needs the instruction text: pass pruning_text='...' (the question, one str "
                         "or one per image) to generate / forward / prepare_inputs_labels_for_multimodal")
    texts = [pruning_text] * count if isinstance(pruning_text, str) else list(pruning_text)
    if len(texts) != count or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"pruning_text must be one str or a list of {count} str (one per image), got {pruning_text!r:.120}")
    return texts


def _batch_of_one(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[N] -> [1, N]; None (a method that reads no attention) stays None."""
    return None if x is None else x[None]


def check_prompt_length(lengths: Sequence[int], max_len: int) -> None:
    """At inference nothing is cut: a prompt longer than the model's ``tokenizer_model_max_length``
    (text + visual tokens, after pruning) is an error that names both lengths."""
    longest = max(lengths)
    if longest > max_len:
        raise ValueError(f"the prompt is {longest} tokens long (text + visual tokens after pruning) but the model "
                         f"takes at most tokenizer_model_max_length={max_len}; shorten the prompt or keep fewer "
                         "visual tokens (--holov-tokens)")


class LlavaMetaModel:
    def __init__(self, config):
        super().__init__(config)
        if hasattr(config, "mm_vision_tower"):
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            if "unpad" in getattr(config, "mm_patch_merge_type", ""):
                self.image_newline = nn.Parameter(torch.empty(config.hidden_size))

    def get_vision_tower(self):
        vision_tower = getattr(self, "vision_tower", None)
        if isinstance(vision_tower, list):
            vision_tower = vision_tower[0]
        return vision_tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """Attach (or load) the tower and the projector for training, as LLaVA's train.py expects."""
        self.config.mm_vision_tower = model_args.vision_tower
        if self.get_vision_tower() is None:
            vision_tower = build_vision_tower(model_args)
            self.vision_tower = [vision_tower] if fsdp else vision_tower
        else:
            vision_tower = self.get_vision_tower()
            vision_tower.load_model()
        self.config.use_mm_proj = True
        self.config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear")
        self.config.mm_hidden_size = vision_tower.hidden_size
        self.config.mm_vision_select_layer = model_args.mm_vision_select_layer
        self.config.mm_vision_select_feature = getattr(model_args, "mm_vision_select_feature", "patch")
        self.config.mm_patch_merge_type = getattr(model_args, "mm_patch_merge_type", "flat")
        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(self.config)
            if "unpad" in self.config.mm_patch_merge_type:
                std = self.config.hidden_size ** -0.5
                self.image_newline = nn.Parameter(torch.randn(self.config.hidden_size) * std)
        else:
            for p in self.mm_projector.parameters():  # it may have been frozen by LoRA
                p.requires_grad = True
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter is not None:
            weights = torch.load(adapter, map_location="cpu", weights_only=True)
            self.mm_projector.load_state_dict({k.split("mm_projector.", 1)[1]: v for k, v in weights.items() if "mm_projector." in k})


def unpad_image(tensor: torch.Tensor, original_size: Tuple[int, int]) -> torch.Tensor:
    """Crop the padding that resize_and_pad_image added: tensor [C, H, W], size (width, height).

    As the original, except that the image's side is at least one row / column: for very
    narrow images (1 x 4000, 3 x 2000) the original's int(...) gives 0 and the crop is
    empty, which crashes every later step."""
    orig_w, orig_h = original_size
    cur_h, cur_w = tensor.shape[1:]
    if orig_w / orig_h > cur_w / cur_h:
        new_h = max(1, int(orig_h * (cur_w / orig_w)))
        pad = (cur_h - new_h) // 2
        return tensor[:, pad:cur_h - pad, :]
    new_w = max(1, int(orig_w * (cur_h / orig_h)))
    pad = (cur_w - new_w) // 2
    return tensor[:, :, pad:cur_w - pad]


class LlavaMetaForCausalLM(ABC):
    @abstractmethod
    def get_model(self):
        ...

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    # ------------------------------------------------------------ pruning setting
    # The setting is resolved once, where the model is loaded (builder / training set-up:
    # explicit > HOLOV_PRUNING > the checkpoint's saved ``holov`` block > off), and set here;
    # every forward reads ``self.pruning`` once and passes it down as an argument.
    pruning: Optional[PruningConfig] = None
    fastv_hooks: Optional[LLMPruningHooks] = None  # in-LLM methods live as hooks on this instance's decoder layers
    last_pruning: Optional[PruningRecord] = None  # what the last pruned forward kept (for pictures and tests)

    def set_pruning(self, config: Optional[PruningConfig]) -> None:
        """Use this resolved setting from the next forward on (None = off).

        Resolve flags, ``HOLOV_PRUNING`` and the saved block first with
        ``holov_patches.resolve_pruning_config``; a string or dict is refused here so that
        no second resolution can happen behind the caller's back."""
        if config is not None and not isinstance(config, PruningConfig):
            raise TypeError(f"set_pruning takes a resolved PruningConfig or None, got {type(config).__name__}: "
                            f"{config!r:.80}; use holov_patches.resolve_pruning_config(...) first")
        config = None if config is None or config.is_off else config
        if self.fastv_hooks is not None:
            self.fastv_hooks.remove()
            self.fastv_hooks = None
        if config is not None and config.stage == "llm":
            self.fastv_hooks = LLMPruningHooks(self.get_model(), config)
        self.pruning = config

    def get_pruning(self) -> Optional[PruningConfig]:
        """The setting in effect (None = off)."""
        return self.pruning

    # ------------------------------------------------------------ images
    def encode_images(self, images: torch.Tensor, with_cls_attn: bool = False, attention_dtype: str = "model"):
        """images [B, 3, S, S] -> projected features [B, N, D] (and [CLS] attention [B, N])."""
        tower = self.get_model().get_vision_tower()
        images = images.to(device=tower.device, dtype=tower.dtype)  # e.g. float16 from lmms-eval
        if with_cls_attn:
            features, cls_attn = tower(images, with_cls_attn=True, attention_dtype=attention_dtype)
            return self.get_model().mm_projector(features), cls_attn
        return self.get_model().mm_projector(tower(images))

    def _prune(self, feats: torch.Tensor, attn: torch.Tensor, cfg: PruningConfig, grid,
               keep: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the registry's pruner on [M, N, D] features of M images sharing one layout
        (``keep``: a part's share of a multi-part image's budget)."""
        return prune_visual_tokens(feats, attn.to(feats.device) if attn is not None else None, cfg, grid=grid, keep=keep)

    def pruner_inputs(self, images: torch.Tensor, cfg: PruningConfig,
                      pruning_text=None) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """What ``cfg``'s method declares, computed for single-tile images [B, 3, S, S] and
        nothing more: (tokens at its stage [B, N, *], the [CLS] row [B, N] or None, the other
        declared inputs by name). Tower-stage tokens are the selected layer's patches.

        ``image_embeds`` [B, N, E] are the selected layer's patches through CLIP's
        post-layernorm and visual projection; ``text_embeds`` [B, M, E] embed ``pruning_text``
        (see :func:`instruction_texts`) in 77-token segments. When the images' texts have
        different segment counts M, ``text_embeds`` is a list of [M_i, E] (one per image)."""
        entry = pre_llm_entry(cfg)
        missing = [n for n in entry.needs if n not in LLAVA_INPUTS]
        if missing:
            raise ValueError(f"method {cfg.method!r} needs {missing}, which our LLaVA path does not compute yet "
                             f"(it computes {list(LLAVA_INPUTS)}); use one of: {', '.join(llava_methods())}")
        tower = self.get_model().get_vision_tower()
        clip_space = [n for n in entry.needs if n in CLIP_SPACE_INPUTS]
        texts = instruction_texts(pruning_text, images.shape[0], cfg.method) if "text_embeds" in clip_space else None
        if entry.stage == "tower":
            inputs = tower.tower_inputs(images, [n for n in entry.needs if n in TOWER_INPUTS], cfg.attention_dtype)
            tokens = features = inputs.pop("tokens")
        elif not clip_space:
            want_attn = "cls_attn" in entry.needs
            out = self.encode_images(images, with_cls_attn=want_attn, attention_dtype=cfg.attention_dtype)
            return (out[0], out[1], {}) if want_attn else (out, None, {})
        else:
            # As encode_images, keeping the tower's features for CLIP's visual projection.
            want_attn = "cls_attn" in entry.needs
            out = tower(images.to(device=tower.device, dtype=tower.dtype), with_cls_attn=want_attn,
                        attention_dtype=cfg.attention_dtype)
            features, cls_attn = out if want_attn else (out, None)
            inputs = {"cls_attn": cls_attn} if want_attn else {}
            tokens = self.get_model().mm_projector(features)
        if "image_embeds" in clip_space:
            inputs["image_embeds"] = tower.image_embeds(features).to(tokens.device)
        if texts is not None:
            embeds = [t.to(tokens.device) for t in tower.text_embeds(texts)]
            same = len({t.shape[0] for t in embeds}) == 1
            inputs["text_embeds"] = torch.stack(embeds) if same else embeds
        return tokens, inputs.pop("cls_attn", None), inputs

    def prune_images(self, images: torch.Tensor, cfg: PruningConfig, grid,
                     pruning_text=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Single-tile images -> (the projected rows the LLM receives [B, K, D], kept_index [B, K]):
        a tower-stage method's kept rows go through the projector after pruning.
        ``pruning_text``: the instruction(s), for methods that need ``text_embeds``."""
        tokens, cls_attn, inputs = self.pruner_inputs(images, cfg, pruning_text)
        if isinstance(inputs.get("text_embeds"), list):  # texts of different segment counts: image by image
            parts = [prune_visual_tokens(tokens[i:i + 1], None if cls_attn is None else cls_attn[i:i + 1], cfg, grid=grid,
                                         **{k: (v[i][None] if k == "text_embeds" else v[i:i + 1]) for k, v in inputs.items()})
                     for i in range(tokens.shape[0])]
            kept, index = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            kept, index = prune_visual_tokens(tokens, cls_attn, cfg, grid=grid, **inputs)
        if pre_llm_entry(cfg).stage == "tower":
            kept = self.get_model().mm_projector(kept.to(self.get_model().get_vision_tower().dtype))
        return kept, index

    def _image_features(self, images, image_sizes, cfg: Optional[PruningConfig],
                        record: Optional[PruningRecord], pruning_text=None) -> List[ImageTokens]:
        """Per image: its visual tokens (pruned by the pre-LLM setting ``cfg``, None = off)
        and where each one sat in the image's unpruned span; each image is added to ``record``."""
        tower = self.get_vision_tower()
        side = tower.num_patches_per_side
        entry = pre_llm_entry(cfg) if cfg is not None else None
        want_attn = entry is not None and "cls_attn" in entry.needs  # computed only for methods that use it
        dtype = cfg.attention_dtype if cfg is not None else "model"
        single_tile = not (isinstance(images, list) or images.ndim == 5)
        if entry is not None and entry.stage == "tower" and not single_tile:
            raise ValueError(f"method {cfg.method!r} prunes inside the vision tower, which our LLaVA path supports for "
                             "single-tile images (LLaVA-1.5) only; for anyres / image lists use a projector-stage "
                             f"method ({', '.join(n for n in llava_methods() if get_entry(n).stage == 'projector')})")
        if entry is not None and not single_tile and set(entry.needs) & set(CLIP_SPACE_INPUTS):
            raise ValueError(f"method {cfg.method!r} needs CLIP's image / text embeddings, which our LLaVA path computes "
                             "for single-tile images (LLaVA-1.5) only, not for anyres / image lists")

        if single_tile:
            if cfg is None:
                return [ImageTokens.whole(feat) for feat in self.encode_images(images)]
            kept, index = self.prune_images(images, cfg, (side, side), pruning_text)
            num = side * side
            results = [ImageTokens.kept(k, i, num) for k, i in zip(kept, index)]
            for i, image in zip(index, results):
                record.add_image(i, num, (side, side), image.offsets, image.span)
            return results

        images = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]
        out = self.encode_images(torch.cat(images, dim=0), with_cls_attn=want_attn, attention_dtype=dtype)
        split = [x.shape[0] for x in images]
        feats_all, attn_all = out if want_attn else (out, None)
        per_image = list(torch.split(feats_all, split, dim=0))  # each [n_crops, N, D]
        per_attn = list(torch.split(attn_all, split, dim=0)) if want_attn else [None] * len(per_image)
        merge = getattr(self.config, "mm_patch_merge_type", "flat")
        results: List[ImageTokens] = []
        for idx, (feat, attn) in enumerate(zip(per_image, per_attn)):
            if merge == "flat" or feat.shape[0] == 1:
                tokens = feat.flatten(0, 1)  # [n_crops * N, D]
                token_attn = attn.flatten(0, 1) if attn is not None else None
                grid = (side * feat.shape[0], side)  # crops stacked top to bottom
                # LLaVA-NeXT appends one newline after a lone base tile
                newline_rows = (tokens.shape[0], 0, 0) if "unpad" in merge else None
            elif merge.startswith("spatial"):
                if image_sizes is None:
                    raise ValueError("anyres images need image_sizes (the original (width, height) of each image)")
                tokens, token_attn, grid, newline_rows = self._spatial_merge(feat, attn, image_sizes[idx], merge, side)
            else:
                raise ValueError(f"unexpected mm_patch_merge_type {merge!r}; accepted: 'flat', 'spatial', 'spatial_unpad'")
            if cfg is None:
                results.append(ImageTokens.whole(self._with_newlines(tokens, newline_rows)))
                continue
            span = _span_with_newlines(tokens.shape[0], newline_rows)
            if newline_rows is not None and newline_rows[1] > 0 and not (cfg.method == "holov" and cfg.mode == "faithful"):
                kept_tokens, index, offsets = self._prune_anyres_2d(tokens, token_attn, cfg, newline_rows)
            else:
                # Faithful HoloV prunes base + high-res tokens as one raster and drops the
                # newlines, as the authors' LLaVA-NeXT code does.
                kept, index = self._prune(tokens[None], _batch_of_one(token_attn), cfg, grid)
                kept_tokens, index = kept[0], index[0]
                offsets = _offsets_in_span(index, newline_rows, span)
            parts = [(side, side), newline_rows[1:]] if newline_rows is not None and newline_rows[1] > 0 else None
            record.add_image(index, tokens.shape[0], grid, offsets, span, parts)
            results.append(ImageTokens(kept_tokens, offsets, span))
        return results

    def _spatial_merge(self, feat, attn, image_size, merge: str, side: int):
        """Anyres: base tile tokens, then the high-res tiles laid out as one 2-D map
        (unpadded for 'spatial_unpad'). Returns the tokens without newlines, their attention,
        grid None (base + map are not one 2-D grid; the 2-D path prunes them separately) and
        the newline layout (n_base, rows, cols) of 'spatial_unpad'."""
        base, hi = feat[0], feat[1:]
        base_attn = attn[0] if attn is not None else None
        cols, rows = get_anyres_image_grid_shape(image_size, self.config.image_grid_pinpoints, self.get_vision_tower().config.image_size)
        dim = hi.shape[-1]
        hi = hi.view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # [D, rows*side, cols*side]
        hi_attn = attn[1:].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten(0, 1).flatten(1, 2)[None] if attn is not None else None
        if "unpad" in merge:
            hi = unpad_image(hi, image_size)
            if hi_attn is not None:
                hi_attn = unpad_image(hi_attn, image_size)
        height, width = hi.shape[1:]
        hi_tokens = hi.flatten(1, 2).transpose(0, 1)  # [h*w, D] raster order
        tokens = torch.cat([base, hi_tokens], dim=0)
        token_attn = torch.cat([base_attn, hi_attn.flatten()], dim=0) if attn is not None else None
        newline = (side * side, height, width) if "unpad" in merge else None
        return tokens, token_attn, None, newline

    def _prune_anyres_2d(self, tokens, token_attn, cfg: PruningConfig, layout):
        """Prune the base tile and the (unpadded) high-res map each on its own 2-D grid.

        The image's budget K (from its own token count) is split between the two maps in
        proportion to their sizes; kept high-res tokens stay in raster order and every
        high-res row that keeps a token ends with image_newline, so the LLM still sees
        the rows of the layout. Returns (tokens [K + rows kept, D], kept positions [K] in the
        newline-free token list, position of every returned embedding in the unpruned span)."""
        n_base, height, width = layout
        side = int(round(n_base ** 0.5))
        keep_base, keep_hi = cfg.split_budget([n_base, tokens.shape[0] - n_base])
        attn = _batch_of_one(token_attn)
        kb, ib = self._prune(tokens[None, :n_base], attn[:, :n_base] if attn is not None else None, cfg, (side, side), keep_base)
        kh, ih = self._prune(tokens[None, n_base:], attn[:, n_base:] if attn is not None else None, cfg, (height, width), keep_hi)
        order = ih[0].argsort()  # raster order of the kept high-res tokens
        hi_index, hi_tokens = ih[0][order], kh[0][order]
        row = hi_index // width
        row_end = torch.cat([row[1:] != row[:-1], row.new_ones(1, dtype=torch.bool)])  # [K_hi]
        newlines_before = torch.cumsum(row_end.long(), 0) - row_end.long()
        slot = torch.arange(hi_index.shape[0], device=hi_index.device) + newlines_before  # output slot of each token
        out = hi_tokens.new_empty((hi_index.shape[0] + int(row_end.sum()), hi_tokens.shape[-1]))
        out[slot] = hi_tokens
        out[slot[row_end] + 1] = self.get_model().image_newline.to(device=out.device, dtype=out.dtype)
        # positions in the unpruned layout, where row r's newline sits after its last column
        positions = torch.empty(out.shape[0], dtype=torch.long, device=hi_index.device)
        positions[slot] = _offsets_in_span(n_base + hi_index, layout, _span_with_newlines(tokens.shape[0], layout))
        positions[slot[row_end] + 1] = n_base + row[row_end] * (width + 1) + width
        return (torch.cat([kb[0], out], dim=0), torch.cat([ib[0], n_base + hi_index]),
                torch.cat([ib[0], positions]))

    def _with_newlines(self, tokens: torch.Tensor, newline_rows) -> torch.Tensor:
        """Insert image_newline after every row of the high-res map (LLaVA-NeXT layout)."""
        if newline_rows is None:
            return tokens
        n_base, height, width = newline_rows
        newline = self.get_model().image_newline.to(device=tokens.device, dtype=tokens.dtype)
        if height == 0:
            return torch.cat([tokens, newline[None]], dim=0)
        hi = tokens[n_base:].view(height, width, -1)
        nl = newline.view(1, 1, -1).expand(height, 1, -1)
        return torch.cat([tokens[:n_base], torch.cat([hi, nl], dim=1).flatten(0, 1)], dim=0)

    # ------------------------------------------------------------ splice
    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, image_sizes=None, padding_side: Optional[str] = None,
                                             pruning_text=None):
        """``pruning_text``: the instruction (one str, or one per image) that a text-conditioned
        method (CDPruner) scores the patches against; ignored by the other methods."""
        vision_tower = self.get_vision_tower()
        if vision_tower is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        cfg = self.pruning  # read once: this forward's setting, passed down from here
        pre_llm = cfg if cfg is not None and cfg.stage != "llm" else None  # FastV and DART act inside the LLM
        record = PruningRecord() if pre_llm is not None else None
        self.last_pruning = record
        image_features = self._image_features(images, image_sizes, pre_llm, record, pruning_text)
        given_labels, given_positions, given_mask = labels, position_ids, attention_mask
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)

        ids_per_row = [ids[m] for ids, m in zip(input_ids, mask)]
        labels_per_row = [lab[m] for lab, m in zip(labels, mask)]
        assignment = self._assign_images(ids_per_row, len(image_features))
        embed = self.get_model().embed_tokens

        new_embeds, new_labels, new_visual, new_positions = [], [], [], []
        for row, (ids, labs) in enumerate(zip(ids_per_row, labels_per_row)):
            image_pos = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
            bounds = [-1] + image_pos + [ids.shape[0]]
            text_ids = [ids[bounds[i] + 1:bounds[i + 1]] for i in range(len(bounds) - 1)]
            text_labels = [labs[bounds[i] + 1:bounds[i + 1]] for i in range(len(bounds) - 1)]
            text_embeds = torch.split(embed(torch.cat(text_ids)), [t.shape[0] for t in text_ids], dim=0)
            pieces, piece_labels, piece_visual, piece_positions = [], [], [], []
            images_for_row = [image_features[i] for i in assignment[row]]
            start = 0  # position of the next embedding had nothing been pruned
            for i, text in enumerate(text_embeds):
                pieces.append(text)
                piece_labels.append(text_labels[i])
                piece_visual.append(torch.zeros(text.shape[0], dtype=torch.bool, device=labs.device))
                piece_positions.append(torch.arange(start, start + text.shape[0], device=labs.device))
                start += text.shape[0]
                if i < len(image_pos):
                    image = images_for_row[i]
                    n = image.tokens.shape[0]
                    pieces.append(image.tokens.to(device=text.device, dtype=text.dtype))
                    piece_labels.append(torch.full((n,), IGNORE_INDEX, device=labs.device, dtype=labs.dtype))
                    piece_visual.append(torch.ones(n, dtype=torch.bool, device=labs.device))
                    piece_positions.append(start + image.offsets.to(labs.device))
                    start += image.span
            if not image_pos and images_for_row:
                # A dummy image for a text-only sample (LLaVA training convention): keep the
                # projector in the graph with a zero-length slice.
                pieces.append(images_for_row[0].tokens[0:0].to(device=pieces[0].device, dtype=pieces[0].dtype))
            new_embeds.append(torch.cat(pieces, dim=0))
            new_labels.append(torch.cat(piece_labels, dim=0))
            new_visual.append(torch.cat(piece_visual, dim=0))
            new_positions.append(torch.cat(piece_positions, dim=0))

        max_len = getattr(self.config, "tokenizer_model_max_length", None)
        if max_len is not None and given_labels is None:
            check_prompt_length([x.shape[0] for x in new_embeds], max_len)
        if max_len is not None:  # training (labels given): LLaVA's cut at tokenizer_model_max_length
            new_embeds = [x[:max_len] for x in new_embeds]
            new_labels = [x[:max_len] for x in new_labels]
            new_visual = [x[:max_len] for x in new_visual]
            new_positions = [x[:max_len] for x in new_positions]
        original = pre_llm is not None and pre_llm.keeps_original_positions
        side = padding_side or getattr(self.config, "tokenizer_padding_side", "right")
        out = self._pad_batch(new_embeds, new_labels, past_key_values, given_labels, given_positions, given_mask, side,
                              new_positions if original else None)
        if record is not None:
            record.position_ids = out[1]
        if self.fastv_hooks is not None:
            self.fastv_hooks.arm(self._pad_flags(new_visual, out[4].shape[1], side))
        return out

    @staticmethod
    def _pad_flags(flags: List[torch.Tensor], length: int, side: str) -> torch.Tensor:
        out = torch.zeros((len(flags), length), dtype=torch.bool, device=flags[0].device)
        for i, f in enumerate(flags):
            if side == "left":
                out[i, length - f.shape[0]:] = f
            else:
                out[i, :f.shape[0]] = f
        return out

    @staticmethod
    def _assign_images(ids_per_row: Sequence[torch.Tensor], num_images: int) -> List[List[int]]:
        """Which image features go to which row, in order.

        Images are matched to ``<image>`` tokens in reading order. LLaVA's training batches
        also carry one dummy image per text-only sample; that layout is recognised too."""
        tags = [int((ids == IMAGE_TOKEN_INDEX).sum()) for ids in ids_per_row]
        total = sum(tags)
        with_dummies = sum(max(t, 1) for t in tags)
        if num_images == total:
            counts = tags
        elif num_images == with_dummies:
            counts = [max(t, 1) for t in tags]
        else:
            raise ValueError(f"the prompts hold {total} <image> tokens (per row: {tags}) but {num_images} images were given; "
                             f"give one image per <image> token")
        out, start = [], 0
        for count in counts:
            out.append(list(range(start, start + count)))
            start += count
        return out

    def _pad_batch(self, embeds, labels, past_key_values, given_labels, given_positions, given_mask, padding_side,
                   row_positions: Optional[List[torch.Tensor]] = None):
        """Pad the rows to one length. ``row_positions`` (original positions after pruning)
        are returned as position_ids; otherwise each row counts 0..n-1, returned only when
        position_ids were given, as LLaVA does."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r} is not one of ('left', 'right')")
        batch, max_len = len(embeds), max(x.shape[0] for x in embeds)
        dim, ref = embeds[0].shape[1], embeds[0]
        out_embeds = torch.zeros((batch, max_len, dim), dtype=ref.dtype, device=ref.device)
        out_labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=labels[0].dtype, device=labels[0].device)
        mask = torch.zeros((batch, max_len), dtype=torch.bool, device=ref.device)
        positions = torch.zeros((batch, max_len), dtype=torch.long, device=ref.device)
        for i, (emb, lab) in enumerate(zip(embeds, labels)):
            n = emb.shape[0]
            sl = slice(max_len - n, max_len) if padding_side == "left" else slice(0, n)
            out_embeds[i, sl] = emb
            out_labels[i, sl] = lab
            mask[i, sl] = True
            positions[i, sl] = row_positions[i] if row_positions is not None else torch.arange(n, device=ref.device)
        needs_mask = given_mask is not None or any(x.shape[0] != max_len for x in embeds)
        return (None,
                positions if given_positions is not None or row_positions is not None else None,
                (mask.to(given_mask.dtype) if given_mask is not None else mask) if needs_mask else None,
                past_key_values,
                out_embeds,
                out_labels if given_labels is not None else None)
