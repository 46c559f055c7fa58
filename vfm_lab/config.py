"""Chapter configs: flat, validated dataclasses with scale presets.

Every chapter notebook starts with a ``parameters`` cell of flat literals (papermill
overrides them); the next cell turns them into the chapter's config with
:meth:`LabConfig.from_scope`. A parameter left at ``None`` takes the value of the
chosen scale preset (``smoke`` for CI, ``lab`` for a laptop, ``full`` for a GPU);
any other value overrides it. Unknown keys, wrong types and out-of-range values are
refused before any work starts, with a message that names the valid choices
(the way nanoGPT's ``configurator.py`` refuses unknown keys).

>>> cfg = TourConfig.from_params(scale="smoke", epochs=2)
>>> cfg.epochs, cfg.scale
(2, 'smoke')
>>> TourConfig.from_params(epocs=2)
Traceback (most recent call last):
...
vfm_lab.config.ConfigError: unknown parameter 'epocs' for TourConfig; did you mean 'epochs'? Valid parameters: ...
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCALES = ("smoke", "lab", "full")
# Names a Jupyter kernel defines in a notebook's global scope that are not parameters.
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open", "display"}


class ConfigError(ValueError):
    """A parameter that is unknown, of the wrong type or out of range."""


def param(default: Any, help: str, *, choices: tuple | None = None,
          min: float | None = None, max: float | None = None) -> Any:
    """A config field: its default, what it means, and what values are valid."""
    return field(default=default, metadata=dict(help=help, choices=choices, min=min, max=max))


@dataclass
class LabConfig:
    """Fields every chapter shares; subclasses add their own and define PRESETS."""

    scale: str = param("smoke", "smoke: ~1 min on 2 CPU cores (CI); lab: minutes on a laptop; full: real data on GPUs",
                       choices=SCALES)
    seed: int = param(0, "seeds data order, initialisation and augmentation", min=0)
    device: str = param("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    precision: str = param("auto", "auto: bf16 autocast on GPU and on CPUs with bf16 units, fp32 otherwise",
                           choices=("auto", "fp32", "bf16", "fp16"))
    out_dir: str = param("", "where results.json, metrics and checkpoints go; '' = runs/<chapter>/<scale>-<hash "
                         "of the other parameters>, so a rerun resumes and a changed parameter starts anew")

    # scale name -> {field: default}; a parameter given explicitly overrides its preset value
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    CHAPTER: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    # ---- building -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls, **params: Any) -> "LabConfig":
        """Defaults <- the scale preset <- every parameter that is not None."""
        names = cls.field_names()
        for key in params:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
                raise ConfigError(f"unknown parameter {key!r} for {cls.__name__}; {did_you_mean}"
                                  f"Valid parameters: {', '.join(names)}")
        scale = params.get("scale") or cls.scale_default()
        if scale not in SCALES:
            raise ConfigError(f"scale={scale!r} is not a scale; choose one of {', '.join(SCALES)}")
        values = {**cls.PRESETS.get(scale, {}), **{k: v for k, v in params.items() if v is not None}}
        values["scale"] = scale
        return cls(**values)

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> "LabConfig":
        """Build the config from a notebook's global names (its parameters cell plus
        whatever papermill injected). Every literal (str, number, bool, None) not
        starting with ``_`` is taken for a parameter, so a misspelt one is refused;
        modules, functions and objects (an earlier ``cfg``) are not parameters."""
        params = {name: value for name, value in scope.items()
                  if not name.startswith("_") and name not in _KERNEL_NAMES
                  and (value is None or isinstance(value, (str, int, float)))}  # literals only: bool is an int
        return cls.from_params(**params)

    @classmethod
    def scale_default(cls) -> str:
        return next(f.default for f in dataclasses.fields(cls) if f.name == "scale")

    # ---- validation -----------------------------------------------------------------
    def validate(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            expected = hints[f.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{f.name}={value!r} should be of type {expected.__name__} "
                                  f"({meta.get('help', '')})")
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{f.name}=nan is not a number ({meta.get('help', '')})")
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{f.name}={value!r} is not valid; choose one of "
                                  f"{', '.join(map(repr, meta['choices']))}")
            if meta.get("min") is not None and value < meta["min"]:
                raise ConfigError(f"{f.name}={value!r} is below its minimum {meta['min']} ({meta.get('help', '')})")
            if meta.get("max") is not None and value > meta["max"]:
                raise ConfigError(f"{f.name}={value!r} is above its maximum {meta['max']} ({meta.get('help', '')})")
        if not self.out_dir:  # one folder per distinct config: a rerun resumes, a changed parameter starts anew
            values = {k: v for k, v in self.to_dict().items() if k != "out_dir"}
            digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
            self.out_dir = f"runs/{self.CHAPTER or type(self).__name__}/{self.scale}-{digest}"

    # ---- showing --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line per parameter: value, and its meaning."""
        rows = []
        for f in dataclasses.fields(self):
            rows.append(f"{f.name:>18} = {getattr(self, f.name)!r:<16} # {f.metadata.get('help', '')}")
        return "\n".join(rows)

    @classmethod
    def help(cls) -> str:
        lines = [f"{cls.__name__} (chapter {cls.CHAPTER}):"]
        for f in dataclasses.fields(cls):
            extra = f" choices: {', '.join(map(str, f.metadata['choices']))}" if f.metadata.get("choices") else ""
            lines.append(f"  {f.name} (default {f.default!r}): {f.metadata.get('help', '')}{extra}")
        return "\n".join(lines)


# ---- the chapters -----------------------------------------------------------------------
from vfm_lab.backbones import BACKBONE_NAMES  # noqa: E402  (after the machinery, which they use)
from vfm_lab.data import DATASET_NAMES  # noqa: E402


@dataclass
class TrainConfig(LabConfig):
    """What every training chapter sets: data, backbone, optimisation."""

    dataset: str = param("shapes", "the data set to train on", choices=DATASET_NAMES)
    backbone: str = param("convnet-s", "a backbone preset (see vfm_lab.backbones)", choices=BACKBONE_NAMES)
    image_size: int = param(32, "images are generated or resized to this many pixels a side", min=8, max=512)
    n_train: int = param(2000, "training images (procedural sets make this many; real sets take a subset; 0 = all)",
                         min=0)
    n_test: int = param(500, "held-out images for evaluation (0 = all)", min=0)
    epochs: int = param(2, "passes over the training images", min=1)
    batch_size: int = param(128, "images per step and process", min=1)
    lr: float = param(2e-3, "peak AdamW learning rate after warm-up", min=0.0)
    weight_decay: float = param(0.05, "AdamW weight decay (not on biases and norms)", min=0.0)
    warmup_epochs: float = param(0.5, "linear warm-up before the cosine decay", min=0.0)

    def train_kwargs(self) -> dict[str, Any]:
        """The arguments of :func:`vfm_lab.engine.fit` that this config sets."""
        return dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                    warmup_epochs=self.warmup_epochs, device=self.device, precision=self.precision, seed=self.seed)

    def validate(self) -> None:
        super().validate()
        if self.n_train and self.batch_size > self.n_train:
            raise ConfigError(f"batch_size={self.batch_size} is larger than n_train={self.n_train}; "
                              f"choose a batch_size of at most {self.n_train}")


@dataclass
class TourConfig(TrainConfig):
    """Chapter 00: the data, the engine, the evaluations, scaling with papermill."""

    CHAPTER: ClassVar[str] = "00_tour"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=1024, n_test=512, epochs=2, batch_size=64),
        "lab": dict(n_train=8000, n_test=2000, epochs=5, batch_size=128),
        "full": dict(n_train=50000, n_test=10000, epochs=30, batch_size=256, backbone="resnet18"),
    }


@dataclass
class SupervisedConfig(TrainConfig):
    """Chapter 01: label supervision -- cross-entropy, CosFace, sampled softmax, transfer."""

    CHAPTER: ClassVar[str] = "01_supervised"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=2048, n_test=512, epochs=3, batch_size=64, real_dataset="mnist5k", real_n_train=2048,
                      real_epochs=2, transfer_dataset="digits", transfer_epochs=2, fine_epochs=1),
        "lab": dict(n_train=8000, n_test=2000, epochs=5, batch_size=128, real_dataset="fashion-mnist",
                    real_n_train=0, real_epochs=2, transfer_dataset="mnist5k", transfer_epochs=1, fine_epochs=1),
        "full": dict(n_train=100000, n_test=10000, epochs=30, batch_size=256, backbone="resnet18",
                     real_dataset="fashion-mnist", real_n_train=0, real_epochs=30, transfer_dataset="mnist5k",
                     transfer_epochs=20, fine_epochs=20),
    }
    margin: float = param(0.35, "CosFace margin m: the target cosine must win by this much", min=0.0, max=0.99)
    cosface_scale: float = param(16.0, "CosFace scale s: larger makes the softmax on the sphere sharper", min=1.0)
    num_sampled: int = param(128, "sampled softmax: random negative classes per step", min=1)
    fine_epochs: int = param(1, "epochs of the thousands-of-classes (attribute combination) experiment", min=1)
    real_dataset: str = param("mnist5k", "the real data set of the chapter", choices=DATASET_NAMES)
    real_n_train: int = param(1024, "training images of the real data set (0 = all)", min=0)
    real_epochs: int = param(1, "epochs on the real data set", min=1)
    transfer_dataset: str = param("digits", "the data set the real-data backbone transfers to",
                                  choices=DATASET_NAMES)
    transfer_epochs: int = param(1, "fine-tuning epochs on the transfer data set", min=1)


CONFIGS: dict[str, type[LabConfig]] = {c.CHAPTER: c for c in (TourConfig, SupervisedConfig)}
