"""The pruning flags shared by every entry point (CLI, run_llava, eval scripts, visualiser)."""
from __future__ import annotations

import argparse
from typing import Optional

from holov_patches.config import MODES, PruningConfig


def add_pruning_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("visual-token pruning (HoloV-LLaVA)")
    group.add_argument("--holov-tokens", "--holov_tokens", dest="holov_tokens", type=int, default=None,
                       help="visual tokens kept per image (K), e.g. 64/128/192 of 576")
    group.add_argument("--prune-ratio", "--prune_ratio", dest="prune_ratio", type=float, default=None,
                       help="fraction of visual tokens pruned, in (0, 1); 0.889 keeps 64 of 576")
    group.add_argument("--holov-crops", "--holov_crops", dest="holov_crops", type=int, default=None,
                       help="HoloV crops P (default: max(1, floor(1024/576 * N / K)))")
    group.add_argument("--holov-mode", "--holov_mode", dest="holov_mode", choices=MODES, default=None,
                       help="HoloV mode: faithful (authors' code, default) or improved")
    group.add_argument("--holov-alpha", "--holov_alpha", dest="holov_alpha", type=float, default=None,
                       help="HoloV diversity weight (default 0.09)")
    group.add_argument("--holov-crop-shape", "--holov_crop_shape", dest="holov_crop_shape", choices=("square", "raster"),
                       default=None, help="improved mode: 2-D 'square' crops (default) or the released 1-D 'raster' runs")
    group.add_argument("--holov-rank-by", "--holov_rank_by", dest="holov_rank_by", choices=("combined", "attention"),
                       default=None, help="improved mode: rank inside a crop by the 'combined' score (default) or raw 'attention'")
    group.add_argument("--holov-diversity-scale", "--holov_diversity_scale", dest="holov_diversity_scale",
                       choices=("crop", "image"), default=None,
                       help="improved mode: normalise the diversity term per 'crop' (default) or over the whole 'image'")
    group.add_argument("--holov-position-ids", "--holov_position_ids", dest="holov_position_ids",
                       choices=("compact", "original"), default=None,
                       help="positions after pruning: 'compact' renumbering (authors) or each kept token's 'original' "
                            "position (default: original for improved HoloV, compact otherwise)")
    group.add_argument("--prune-method", "--prune_method", dest="prune_method", default=None,
                       help="pruning method from the registry (holov, ...; 'none' turns pruning off)")
    return parser


def pruning_config_from_args(args: argparse.Namespace) -> Optional[PruningConfig]:
    """``None`` when no pruning flag was given, so the environment or saved config applies."""
    return PruningConfig.from_flags(
        tokens=getattr(args, "holov_tokens", None), ratio=getattr(args, "prune_ratio", None),
        crops=getattr(args, "holov_crops", None), mode=getattr(args, "holov_mode", None),
        method=getattr(args, "prune_method", None), alpha=getattr(args, "holov_alpha", None),
        crop_shape=getattr(args, "holov_crop_shape", None), rank_by=getattr(args, "holov_rank_by", None),
        diversity_scale=getattr(args, "holov_diversity_scale", None),
        position_ids=getattr(args, "holov_position_ids", None),
    )
