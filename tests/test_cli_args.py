"""The pruning flags shared by every entry point parse into one PruningConfig."""
import argparse

import pytest

from holov_patches import PruningConfig
from holov_patches.cli_args import add_pruning_args, pruning_config_from_args


def _parse(argv):
    return pruning_config_from_args(add_pruning_args(argparse.ArgumentParser()).parse_args(argv))


def test_no_flag_means_no_explicit_setting():
    assert _parse([]) is None


def test_flags_map_to_fields():
    cfg = _parse(["--holov-tokens", "128", "--holov-crops", "8", "--holov-mode", "improved", "--holov-alpha", "0.2",
                  "--holov-crop-shape", "raster", "--holov-rank-by", "attention", "--holov-diversity-scale", "image",
                  "--holov-position-ids", "compact"])
    assert cfg == PruningConfig(keep=128, num_crops=8, mode="improved", alpha=0.2, crop_shape="raster",
                                rank_by="attention", diversity_scale="image", position_ids="compact")
    assert _parse(["--prune_ratio", "0.889", "--prune_method", "cls_topk"]) == PruningConfig(method="cls_topk", ratio=0.889)


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="keep=0"):
        _parse(["--holov-tokens", "0"])
    with pytest.raises(ValueError, match="unknown pruning method 'nope'"):
        _parse(["--prune-method", "nope"])
    with pytest.raises(SystemExit):
        _parse(["--holov-mode", "fast"])
