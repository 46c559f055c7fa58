"""Chapter configs: presets and overrides, refusal of unknown keys, wrong types, out-of-range
values and invalid choices, building from a notebook's scope, the derived out_dir, and a
property test over every numeric field's [min, max]."""
from __future__ import annotations

import builtins
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfm_lab.backbones import BACKBONE_NAMES
from vfm_lab.config import (CONFIGS, SCALES, ConfigError, LabConfig, SupervisedConfig, TourConfig,
                            TrainConfig)
from vfm_lab.data import DATASET_NAMES
from vfm_lab.data.shapes import IMAGE_SIZES as SHAPES_IMAGE_SIZES

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def numeric_fields(cls: type[LabConfig]) -> list[tuple[str, type, float | None, float | None]]:
    """(name, int or float, min, max) of every numeric field of ``cls``."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.metadata.get("min"), f.metadata.get("max"))
            for f in dataclasses.fields(cls) if hints[f.name] in (int, float)]


# ---- presets and overrides ------------------------------------------------------------
def test_preset_applies_and_none_takes_the_preset():
    cfg = TourConfig.from_params(scale="lab", epochs=None, n_train=None)
    lab = TourConfig.PRESETS["lab"]
    assert (cfg.scale, cfg.epochs, cfg.n_train, cfg.n_test, cfg.batch_size) == (
        "lab", lab["epochs"], lab["n_train"], lab["n_test"], lab["batch_size"])
    assert cfg.lr == 2e-3  # not in the preset: the field default


def test_explicit_parameter_overrides_the_preset():
    cfg = TourConfig.from_params(scale="full", epochs=7, backbone="vit-tiny")
    assert (cfg.epochs, cfg.backbone) == (7, "vit-tiny")
    assert cfg.batch_size == TourConfig.PRESETS["full"]["batch_size"]  # the rest of the preset still applies
    assert TourConfig.from_params(scale="full").backbone == "resnet18"


def test_scale_none_or_absent_is_the_default_scale():
    assert TourConfig.from_params().scale == TourConfig.from_params(scale=None).scale == "smoke"
    assert TourConfig.from_params().epochs == TourConfig.PRESETS["smoke"]["epochs"]


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("scale", SCALES)
def test_every_preset_builds_with_its_values(cls, scale):
    assert set(cls.PRESETS) == set(SCALES), f"{cls.__name__} should define a preset per scale"
    unknown = set(cls.PRESETS[scale]) - set(cls.field_names())
    assert not unknown, f"{cls.__name__}.PRESETS[{scale!r}] sets non-fields {unknown}"
    cfg = cls.from_params(scale=scale)
    for key, value in cls.PRESETS[scale].items():
        assert getattr(cfg, key) == value


def test_configs_maps_chapter_names_to_classes():
    assert {"00_tour": TourConfig, "01_supervised": SupervisedConfig}.items() <= CONFIGS.items()
    for chapter, cls in CONFIGS.items():
        assert re.fullmatch(r"\d\d_[a-z_]+", chapter)
        assert cls.CHAPTER == chapter and issubclass(cls, LabConfig)


# ---- refusals -------------------------------------------------------------------------
def test_unknown_key_refused_with_did_you_mean_and_valid_names():
    with pytest.raises(ConfigError, match="unknown parameter 'epocs' for TourConfig; did you mean 'epochs'") as e:
        TourConfig.from_params(epocs=3)
    for name in TourConfig.field_names():
        assert name in str(e.value)
    with pytest.raises(ConfigError) as e:
        TourConfig.from_params(zzzz=1)
    assert "did you mean" not in str(e.value) and "warmup_epochs" in str(e.value)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("key, value", [
    ("epochs", "3"),      # str for int
    ("epochs", True),     # bool for int
    ("epochs", 2.0),      # float for int
    ("seed", 1.5),
    ("lr", "1e-3"),       # str for float
    ("lr", False),        # bool for float
    ("backbone", 3),      # int for str
    ("dataset", 1.0),     # float for str
])
def test_wrong_type_refused_naming_key_and_value(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"{key}={value!r} should be of type")):
        TourConfig.from_params(**{key: value})


def test_int_accepted_for_float():
    cfg = SupervisedConfig.from_params(lr=1, cosface_scale=30, margin=0)
    assert (cfg.lr, cfg.cosface_scale, cfg.margin) == (1.0, 30.0, 0.0)
    assert all(type(v) is float for v in (cfg.lr, cfg.cosface_scale, cfg.margin))


@pytest.mark.parametrize("cls, key, value, bound", [
    (TourConfig, "epochs", 0, "minimum 1"),
    (TourConfig, "epochs", -3, "minimum 1"),
    (TourConfig, "lr", -1e-3, "minimum 1e-08"),
    (TourConfig, "lr", 0.0, "minimum 1e-08"),  # a step size of 0 trains nothing
    (TourConfig, "seed", -1, "minimum 0"),
    (TourConfig, "n_train", -1, "minimum 0"),
    (TourConfig, "image_size", 4, "minimum 8"),
    (TourConfig, "image_size", 1024, "maximum 512"),
    (SupervisedConfig, "margin", 0.995, "maximum 0.99"),
    (SupervisedConfig, "cosface_scale", 0.5, "minimum 1.0"),
])
def test_out_of_range_refused(cls, key, value, bound):
    with pytest.raises(ConfigError, match=re.escape(f"{key}={value!r} is ") + ".*" + re.escape(bound)):
        cls.from_params(**{key: value})


@pytest.mark.parametrize("cls, key", [(TourConfig, "lr"), (SupervisedConfig, "margin")])
def test_nan_refused(cls, key):
    with pytest.raises(ConfigError, match=key):
        cls.from_params(**{key: math.nan})


@pytest.mark.parametrize("key, value, valid", [
    ("scale", "huge", SCALES),
    ("backbone", "vgg16", BACKBONE_NAMES),
    ("dataset", "imagenet", DATASET_NAMES),
    ("precision", "fp8", ("auto", "fp32", "bf16", "fp16")),
])
def test_invalid_choice_refused_naming_the_valid_ones(key, value, valid):
    with pytest.raises(ConfigError, match=re.escape(f"{key}={value!r}")) as e:
        TourConfig.from_params(**{key: value})
    for choice in valid:
        assert choice in str(e.value)


def test_batch_size_larger_than_n_train_refused():
    with pytest.raises(ConfigError, match="batch_size=128 is larger than n_train=100.*at most 100"):
        TourConfig.from_params(n_train=100, batch_size=128)
    assert TourConfig.from_params(n_train=100, batch_size=100).batch_size == 100
    assert TourConfig.from_params(n_train=0, batch_size=4096).batch_size == 4096  # 0 = all images


# ---- from_scope -----------------------------------------------------------------------
def helper():  # a function defined in the notebook
    return 1


def notebook_scope(**params):
    """What ``globals()`` holds in a Jupyter kernel after the parameters cell and an import cell."""
    return {"__name__": "__main__", "__builtins__": builtins, "__doc__": None, "_ih": ["", "scale = 'lab'"],
            "_oh": {}, "_i1": "scale = 'lab'", "_": None, "__": "", "In": ["", "scale = 'lab'"], "Out": {},
            "get_ipython": lambda: None, "exit": object(), "quit": object(), "open": builtins.open,
            "display": print, "np": np, "json": json, "helper": helper, "TourConfig": TourConfig,
            "ConfigError": ConfigError, "len": len, **params}


def test_from_scope_ignores_kernel_names_modules_functions_classes():
    cfg = TourConfig.from_scope(notebook_scope(scale="lab", epochs=3, n_train=None, lr=1e-3))
    assert (cfg.scale, cfg.epochs, cfg.lr) == ("lab", 3, 1e-3)
    assert cfg.n_train == TourConfig.PRESETS["lab"]["n_train"]


def test_from_scope_refuses_an_unknown_plain_value():
    with pytest.raises(ConfigError, match="unknown parameter 'epocs'.*did you mean 'epochs'"):
        TourConfig.from_scope(notebook_scope(scale="lab", epocs=3))


def test_from_scope_can_be_rerun_in_the_same_kernel():
    scope = notebook_scope(scale="lab", epochs=3)
    scope["cfg"] = TourConfig.from_scope(scope)
    assert TourConfig.from_scope(scope) == scope["cfg"]


def parameters_cell(chapter: str) -> dict:
    """The names that the notebook's cell tagged ``parameters`` defines, and their values."""
    path = NOTEBOOKS / f"{chapter}.ipynb"
    if not path.exists():
        pytest.skip(f"{path.name} is not written yet")
    cells = [c for c in json.loads(path.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    scope: dict = {}
    exec("".join(cells[0]["source"]), scope)
    del scope["__builtins__"]
    return scope


@pytest.mark.parametrize("chapter", CONFIGS)
def test_notebook_parameters_cell_builds_its_config(chapter):
    scope = parameters_cell(chapter)
    assert set(scope) == set(CONFIGS[chapter].field_names())  # the cell holds the config's flat literals
    assert isinstance(CONFIGS[chapter].from_scope(scope), CONFIGS[chapter])


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("chapter", CONFIGS)
def test_notebook_parameters_cell_leaves_every_preset_in_force(chapter, scale):
    """``papermill -p scale full`` must get the full preset: a literal in the cell for a value that some
    preset sets would silently win over it (as ``backbone = "convnet-s"`` once did over resnet18)."""
    cls = CONFIGS[chapter]
    from_notebook = cls.from_scope({**parameters_cell(chapter), "scale": scale})
    assert from_notebook == cls.from_params(scale=scale)


# ---- the derived out_dir --------------------------------------------------------------
def test_default_out_dir_names_chapter_scale_and_a_hash():
    assert re.fullmatch(r"runs/00_tour/smoke-[0-9a-f]{8}", TourConfig.from_params().out_dir)
    assert re.fullmatch(r"runs/01_supervised/lab-[0-9a-f]{8}", SupervisedConfig.from_params(scale="lab").out_dir)


def test_default_out_dir_depends_on_the_other_parameters():
    base = TourConfig.from_params(scale="lab", lr=1e-3, epochs=3).out_dir
    assert TourConfig.from_params(epochs=3, lr=1e-3, scale="lab").out_dir == base  # order does not matter
    assert TourConfig.from_params(scale="lab", lr=1e-3, epochs=4).out_dir != base
    assert TourConfig.from_params(scale="lab", lr=2e-3, epochs=3).out_dir != base
    assert TourConfig.from_params(scale="lab", lr=1e-3, epochs=3, seed=1).out_dir != base
    # a value given explicitly that equals the preset is the same run
    preset = TourConfig.PRESETS["lab"]["epochs"]
    assert TourConfig.from_params(scale="lab", epochs=preset).out_dir == TourConfig.from_params(scale="lab").out_dir


def test_default_out_dir_does_not_depend_on_out_dir_itself():
    cfg = TourConfig.from_params(scale="lab", epochs=3)
    assert TourConfig.from_params(**cfg.to_dict()) == cfg  # the derived folder round-trips unchanged
    assert TourConfig.from_params(**{**cfg.to_dict(), "out_dir": ""}).out_dir == cfg.out_dir
    assert TourConfig.from_params(scale="lab", epochs=3, out_dir="mine/run1").out_dir == "mine/run1"


def test_default_out_dir_is_stable_across_processes():
    code = "from vfm_lab.config import TourConfig; print(TourConfig.from_params(scale='lab', epochs=3).out_dir)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == TourConfig.from_params(scale="lab", epochs=3).out_dir


# ---- showing --------------------------------------------------------------------------
def test_describe_opens_with_the_smoke_banner_at_smoke_scale_only():
    assert TourConfig.from_params(scale="smoke").describe().splitlines()[0].startswith(
        "scale='smoke' only checks that the code runs")
    assert "vfm-lab run 00_tour -p scale=lab" in TourConfig.from_params(scale="smoke").describe()
    assert "only checks" not in TourConfig.from_params(scale="lab").describe()


def test_describe_mentions_every_field_with_its_value():
    cfg = SupervisedConfig.from_params(scale="lab", margin=0.2)
    text = cfg.describe()
    assert len(text.splitlines()) == len(dataclasses.fields(cfg))
    for f in dataclasses.fields(cfg):
        line = next(line for line in text.splitlines() if line.split("=")[0].strip() == f.name)
        assert repr(getattr(cfg, f.name)) in line and f.metadata["help"] in line


def test_help_lists_choices():
    text = TourConfig.help()
    assert "00_tour" in text and all(name in text for name in BACKBONE_NAMES)


# ---- properties over every numeric field ----------------------------------------------
def value_in(kind: type, lo: float | None, hi: float | None) -> st.SearchStrategy:
    lo = 0 if lo is None else lo
    hi = lo + 10**6 if hi is None else hi
    if kind is int:
        return st.integers(int(lo), int(hi))
    return st.one_of(st.floats(lo, hi, allow_nan=False), st.integers(math.ceil(lo), math.floor(hi)))


@st.composite
def valid_params(draw, cls):
    params = {name: draw(value_in(kind, lo, hi)) for name, kind, lo, hi in numeric_fields(cls)}
    if issubclass(cls, TrainConfig) and params["n_train"]:
        params["batch_size"] = draw(st.integers(1, params["n_train"]))
    if issubclass(cls, TrainConfig):  # the rules between fields: shapes (the default data) draws from 16 px up,
        params["image_size"] = draw(st.integers(SHAPES_IMAGE_SIZES[0], 512))  # and one held-out image is refused
        params["n_test"] = draw(st.just(0) | st.integers(2, 10**6))
    params["scale"] = draw(st.sampled_from(SCALES))
    return params


@st.composite
def invalid_param(draw, cls):
    name, kind, lo, hi = draw(st.sampled_from([f for f in numeric_fields(cls) if f[2] is not None]))
    if kind is int:
        return name, draw(st.integers(int(lo) - 10**6, int(lo) - 1))
    return name, draw(st.floats(max_value=lo, exclude_max=True, allow_nan=False))


@pytest.mark.parametrize("cls", [TourConfig, SupervisedConfig])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_valid_numeric_values_build_and_are_kept(cls, data):
    params = data.draw(valid_params(cls))
    cfg = cls.from_params(**params)
    kinds = {name: kind for name, kind, *_ in numeric_fields(cls)}
    for name, value in params.items():
        assert getattr(cfg, name) == value
        assert type(getattr(cfg, name)) is kinds.get(name, str)  # an int given for a float is stored as float


@pytest.mark.parametrize("cls", [TourConfig, SupervisedConfig])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_values_below_minimum_are_refused(cls, data):
    name, value = data.draw(invalid_param(cls))
    with pytest.raises(ConfigError, match=re.escape(f"{name}={value!r} is below its minimum")):
        cls.from_params(**{name: value})
