"""PruningConfig: round trips, ratio -> K, validation, the improved-mode fields, and the
precedence explicit > environment > saved > off."""
import json
from dataclasses import fields

import pytest

from holov_patches import ENV_VAR, PruningConfig, resolve_pruning_config

# One non-default value per field, so a round trip that drops or renames any field fails.
NON_DEFAULT = {
    "method": "holov", "keep": 128, "ratio": None, "num_crops": 9, "mode": "improved", "alpha": 0.5,
    "options": {"note": "x"}, "crop_shape": "raster", "rank_by": "attention", "diversity_scale": "image",
    "position_ids": "compact", "attention_dtype": "float32",
}


def test_every_field_has_help_and_is_covered_here():
    names = {f.name for f in fields(PruningConfig)}
    assert names == set(NON_DEFAULT)
    assert all(f.metadata.get("help") for f in fields(PruningConfig))


def test_round_trip_through_dict_json_and_string():
    config = PruningConfig(**NON_DEFAULT)
    assert config.to_dict() == NON_DEFAULT
    assert PruningConfig.from_dict(config.to_dict()) == config
    assert PruningConfig.from_string(json.dumps(config.to_dict())) == config
    by_ratio = PruningConfig(ratio=0.75, num_crops=4)
    assert PruningConfig.from_dict(by_ratio.to_dict()) == by_ratio
    parsed = PruningConfig.from_string("method=holov,keep=64,mode=improved,rank_by=attention,alpha=0.2")
    assert (parsed.keep, parsed.mode, parsed.rank_by, parsed.alpha, parsed.crop_shape) == (64, "improved", "attention", 0.2, None)


def test_unknown_keys_are_refused_naming_the_key_and_the_known_ones():
    # Issue "bad days" 14: a typo must not silently give the default budget.
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]; known keys: \[.*'keep'"):
        PruningConfig.from_dict({"keep": 32, "bogus": 1})
    with pytest.raises(ValueError, match=r"HOLOV_PRUNING environment variable: unknown key\(s\) \['kep'\]"):
        resolve_pruning_config(environ={"HOLOV_PRUNING": "kep=128"})
    with pytest.raises(ValueError, match=r"saved 'holov' block: unknown key\(s\) \['kep'\]"):
        resolve_pruning_config(saved={"kep": 128}, environ={})


def test_repeated_key_blank_value_and_bad_json():
    with pytest.raises(ValueError, match="gives 'keep' twice"):
        resolve_pruning_config(environ={"HOLOV_PRUNING": "keep=64,keep=128"})
    assert resolve_pruning_config(environ={"HOLOV_PRUNING": " "}) is None  # blank never switches pruning on
    assert resolve_pruning_config(environ={"HOLOV_PRUNING": ""}, saved={"keep": 8}).keep == 8
    with pytest.raises(ValueError, match="HOLOV_PRUNING environment variable is not valid JSON"):
        resolve_pruning_config(environ={"HOLOV_PRUNING": '{"keep": 64,}'})


@pytest.mark.parametrize("ratio,keep", [(0.667, 192), (0.778, 128), (0.889, 64)])
def test_from_ratio_gives_the_paper_budgets(ratio, keep):
    config = PruningConfig.from_ratio(ratio)
    assert config.keep == keep and config.ratio is None
    assert PruningConfig(ratio=ratio).resolve_keep(576) == keep


def test_defaults_and_derived_values():
    config = PruningConfig()
    assert (config.method, config.keep, config.mode, config.alpha) == ("holov", 64, "faithful", 0.09)
    assert config.resolve_num_crops(576) == 16
    assert config.pruner_kwargs() == {"num_crops": None, "mode": "faithful", "alpha": 0.09}


def test_improved_fields_reach_pruner_kwargs_only_when_set():
    config = PruningConfig(mode="improved", rank_by="attention", options={"crop_shape": "raster"})
    kwargs = config.pruner_kwargs()
    assert kwargs["rank_by"] == "attention" and kwargs["crop_shape"] == "raster"  # options are not overwritten by None
    assert "diversity_scale" not in kwargs
    assert "rank_by=attention" in config.describe()


@pytest.mark.parametrize("kwargs,match", [
    ({"keep": 0}, "keep=0"), ({"keep": 1.5}, "keep=1.5"), ({"keep": True}, "keep=True"),
    ({"keep": 64, "ratio": 0.5}, "not both"), ({"ratio": 1.0}, "ratio=1.0"), ({"ratio": 0}, "ratio=0"),
    ({"mode": "fast"}, "mode='fast'"), ({"alpha": -1}, "alpha=-1"), ({"alpha": float("inf")}, "alpha=inf"),
    ({"num_crops": 0}, "num_crops=0"), ({"method": "nosuch"}, "unknown pruning method 'nosuch'"),
    ({"method": ""}, "method=''"), ({"options": [1]}, "options=\\[1\\]"),
    ({"mode": "improved", "rank_by": "variance"}, "rank_by='variance'"),
    ({"mode": "improved", "crop_shape": "hex"}, "crop_shape='hex'"),
    ({"mode": "improved", "diversity_scale": "batch"}, "diversity_scale='batch'"),
    ({"rank_by": "combined"}, "only apply to mode='improved'"),
])
def test_bad_values_raise_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningConfig(**kwargs)


def test_resolve_keep_rejects_bad_token_counts():
    with pytest.raises(ValueError, match="num_tokens=0"):
        PruningConfig().resolve_keep(0)


def test_precedence_explicit_then_environment_then_saved_then_off():
    explicit, saved = PruningConfig(keep=32), {"keep": 128}
    environ = {ENV_VAR: "keep=96,mode=improved"}
    assert resolve_pruning_config(explicit, saved, environ).keep == 32
    from_env = resolve_pruning_config(None, saved, environ)
    assert (from_env.keep, from_env.mode) == (96, "improved")
    assert resolve_pruning_config(None, saved, {}).keep == 128
    assert resolve_pruning_config(None, None, {}) is None
    assert resolve_pruning_config(None, saved, {ENV_VAR: ""}).keep == 128  # an empty variable is unset
    # "none" switches pruning off at its own level and hides the levels below it
    assert resolve_pruning_config('{"method": "none"}', saved, environ) is None
    assert resolve_pruning_config(None, saved, {ENV_VAR: "method=off"}) is None
    assert resolve_pruning_config(None, {"method": "none"}, {}) is None
