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
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vfm_lab.errors import LabError

SCALES = ("smoke", "lab", "full")
SMOKE_BANNER = ("scale='smoke' only checks that the code runs: its models are too small and short for the lessons, "
                "which need scale='lab' (vfm-lab run {chapter} -p scale=lab)")
# Names a Jupyter kernel defines in a notebook's global scope that are not parameters.
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open", "display"}


class ConfigError(LabError, ValueError):
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
            if isinstance(value, float) and math.isinf(value):
                raise ConfigError(f"{f.name}={value!r} is not a finite number ({meta.get('help', '')})")
        try:  # a device this machine lacks (cuda without a GPU), or fp16 on the CPU: refused now, before any work
            resolve_precision(self.precision, resolve_device(self.device))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not self.out_dir:  # one folder per distinct config: a rerun resumes, a changed parameter starts anew
            values = {k: v for k, v in self.to_dict().items() if k != "out_dir"}
            digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
            self.out_dir = f"runs/{self.CHAPTER or type(self).__name__}/{self.scale}-{digest}"
        check_out_dir(self.out_dir)

    # ---- showing --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line per parameter: value, and its meaning; at ``smoke`` scale first a banner that the
        run only checks the code (the notebooks print this in their first cell)."""
        rows = [SMOKE_BANNER.format(chapter=self.CHAPTER)] if self.scale == "smoke" else []
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


def check_out_dir(out_dir: str) -> None:
    """An out_dir that can never become a writable folder is refused with the config, before any work
    (nothing is created here: the run makes the folder when it starts)."""
    path = Path(out_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"out_dir={out_dir!r} cannot be a folder: {str(existing)!r} is a file; "
                          f"choose another out_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"out_dir={out_dir!r} cannot be written: {str(existing)!r} is not writable by this user; "
                          f"choose another out_dir")


# ---- the chapters -----------------------------------------------------------------------
MIN_LR = 1e-8  # learning rates: a step size of 0 trains nothing
from vfm_lab.backbones import BACKBONE_NAMES, DEFAULT_PATCH_SIZE, VIT_NAMES  # noqa: E402  (after the machinery)
from vfm_lab.data import DATASET_NAMES  # noqa: E402
from vfm_lab.data.icon_scenes import MAX_OBJECTS as ICON_SCENES_MAX_OBJECTS  # noqa: E402
from vfm_lab.data.icons import ICON_SETS  # noqa: E402
from vfm_lab.data.shapes import IMAGE_SIZES as SHAPES_IMAGE_SIZES  # noqa: E402
from vfm_lab.runtime import resolve_device, resolve_precision  # noqa: E402


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
    lr: float = param(2e-3, "peak AdamW learning rate after warm-up", min=MIN_LR)
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
        if self.n_test == 1:
            raise ConfigError("n_test=1: the evaluations compare held-out images with each other; choose at least 2 "
                              "(or 0 for all)")
        lo, hi = SHAPES_IMAGE_SIZES
        if self.dataset == "shapes" and self.image_size < lo:
            raise ConfigError(f"image_size={self.image_size} is below what dataset='shapes' draws ({lo} to {hi} "
                              f"pixels a side); choose an image_size of at least {lo}")
        check_patches(self, "backbone")


def check_patches(cfg: TrainConfig, field: str) -> None:
    """A ViT cuts the image into squares of DEFAULT_PATCH_SIZE pixels: an image size it does not divide
    is refused with the config, not later when the backbone is built."""
    backbone, size, p = getattr(cfg, field), cfg.image_size, DEFAULT_PATCH_SIZE
    if backbone in VIT_NAMES and size % p:
        raise ConfigError(f"image_size={size} is not divisible by the patch size {p} of {field}={backbone!r}; "
                          f"choose a multiple of {p} (for example {size // p * p} or {size // p * p + p})")


def check_finetune_n_train(cfg: Any) -> None:
    """The labelled images of the probes and fine-tuning are the first of the training set: no more than it has."""
    if cfg.finetune_n_train > cfg.n_train > 0:
        raise ConfigError(f"finetune_n_train={cfg.finetune_n_train} is more than n_train={cfg.n_train}; the probes and "
                          f"fine-tuning use the first images of the training set: choose at most {cfg.n_train}")


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



@dataclass
class TwoTowerConfig(TrainConfig):
    """What the image-text chapters (02, 06) share: image-caption pairs and the text tower of
    :class:`~vfm_lab.methods.clip.ClipModel`."""

    dataset: str = param("shapes", "the image-caption pairs to train on (the other data sets have no captions)",
                         choices=("shapes", *ICON_SETS))
    batch_size: int = param(128, "image-caption pairs per step and process: each image's caption is told apart from "
                            "the batch's other captions, so at least 2", min=2)
    lr: float = param(1e-3, "peak AdamW learning rate after warm-up", min=MIN_LR)
    weight_decay: float = param(0.1, "AdamW weight decay (not on biases, norms and the temperature)", min=0.0)
    text_tower: str = param("scratch-s", "scratch-s / scratch-b: an open_clip text transformer trained from scratch "
                            "(CPU / GPU size); minilm-locked: pretrained all-MiniLM-L6-v2, frozen (the reverse of LiT, "
                            "which locks the image tower)",
                            choices=("scratch-s", "scratch-b", "minilm-locked"))
    embed_dim: int = param(128, "size of the joint image-text embedding", min=8)
    context_length: int = param(32, "text tokens per caption (shapes captions need at most 31)", min=8, max=77)
    init_temperature: float = param(0.07, "starting softmax temperature T = 1 / exp(logit_scale), learned (CLIP: 0.07)",
                                    min=0.01, max=1.0)
    local_loss: bool = param(True, "under DDP: each rank scores its own images against all gathered texts (open_clip "
                             "local_loss), instead of every rank computing the whole global matrix")

    def tower_kwargs(self) -> dict[str, Any]:
        """The arguments of :class:`~vfm_lab.methods.clip.ClipModel` that this config sets."""
        return dict(text_tower=self.text_tower, embed_dim=self.embed_dim, context_length=self.context_length,
                    init_temperature=self.init_temperature, local_loss=self.local_loss)


@dataclass
class ClipConfig(TwoTowerConfig):
    """Chapter 02: language supervision -- CLIP, SigLIP, a locked pretrained text tower, zero-shot, retrieval."""

    CHAPTER: ClassVar[str] = "02_clip"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=512, n_test=256, epochs=2, batch_size=64, compare_epochs=1, scaling_epochs=1,
                      icon_epochs=1, icon_n_train=512, fmnist_n_test=1000),
        "lab": dict(n_train=8000, n_test=1000, epochs=10, batch_size=128, compare_epochs=3, scaling_epochs=1,
                    scaling_n_train=4000, icon_epochs=10),
        "full": dict(n_train=100000, n_test=5000, epochs=30, batch_size=512, backbone="resnet18",
                     text_tower="scratch-b", embed_dim=256, compare_epochs=30, scaling_epochs=5, icon_epochs=30),
    }
    loss: str = param("clip", "clip: softmax over the batch (InfoNCE); siglip: a sigmoid per image-text pair",
                      choices=("clip", "siglip"))

    def tower_kwargs(self) -> dict[str, Any]:
        return {**super().tower_kwargs(), "loss": self.loss}

    compare_epochs: int = param(1, "epochs of each run in the CLIP vs SigLIP vs locked-MiniLM comparison", min=1)
    scaling_epochs: int = param(1, "epochs of the smallest batch in the batch-size experiment; a batch k times larger "
                                "trains k times the epochs, so every run takes the same steps", min=1)
    scaling_n_train: int = param(0, "pairs each run of the batch-size experiment trains on, the first of the training "
                                 "set (0 = all); sweeps/02_clip_batch.yaml runs it at full budget instead", min=0)
    icon_dataset: str = param("emoji", "the real icon set(s) of the last section: CLIP vs the locked MiniLM on "
                              "held-out categories and Fashion-MNIST (all: the three; none: skip it)",
                              choices=("none", "emoji", "openmoji", "openclipart", "all"))
    icon_epochs: int = param(1, "epochs of each run on the icon set", min=1)
    icon_n_train: int = param(0, "training pairs of the icon set (0 = all of them)", min=0)
    fmnist_n_test: int = param(0, "Fashion-MNIST test images for the zero-shot of the icon models (0 = all 10,000)",
                               min=0)


@dataclass
class ContrastiveConfig(TrainConfig):
    """Chapter 03: contrastive self-supervision -- SimCLR, MoCo v2 (queue), MoCo v3 (predictor, no queue)."""

    CHAPTER: ClassVar[str] = "03_contrastive"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=768, n_test=384, epochs=2, batch_size=128, queue_size=512, ablation_epochs=1,
                      sweep_n_train=384, shapes_n_train=384),
        "lab": dict(n_train=8000, n_test=2000, epochs=3, batch_size=32, queue_size=4096, ablation_epochs=1,
                    sweep_n_train=2000, shapes_n_train=4000),
        "full": dict(n_train=50000, n_test=10000, epochs=200, batch_size=512, backbone="resnet18",
                     queue_size=16384, hidden_dim=2048, ablation_epochs=50,
                     crop_min=0.08, jitter_strength=0.5, tone_p=0.0),  # SimCLR's CIFAR views (appendix B.9)
    }
    dataset: str = param("fashion-mnist", "the data set of the headline, each method against the random backbone "
                         "(shapes where it is missing); the second half of the chapter trains on shapes",
                         choices=DATASET_NAMES)
    batch_size: int = param(128, "images per step and process: each image's views are told apart from the batch's "
                            "other images (and BatchNorm needs two), so at least 2", min=2)
    lr: float = param(3e-3, "peak AdamW learning rate after warm-up", min=MIN_LR)
    method: str = param("simclr", "what the command-line job pre-trains; the notebook trains all three",
                        choices=("simclr", "moco_v2", "moco_v3"))
    temperature: float = param(0.2, "softmax temperature of the contrastive loss: lower leans harder on the nearest "
                               "negatives (SimCLR 0.1-0.5, MoCo 0.2)", min=0.01, max=10.0)
    proj_dim: int = param(128, "output size of the projection head, the space the loss compares in (papers 128-256)",
                          min=2)
    hidden_dim: int = param(512, "hidden width of the projection head and MoCo v3 predictor (papers 2048-4096)",
                            min=2)
    queue_size: int = param(4096, "MoCo v2: negatives kept from earlier batches (paper 65536); keep it below n_train, "
                            "or an image meets its own older key as a negative", min=1)
    momentum: float = param(0.99, "MoCo v2 key encoder EMA momentum (paper 0.999; short runs want a faster key "
                            "encoder, but at 0.9 the queued keys disagree and v2 collapses)", min=0.0, max=1.0)
    symmetric: bool = param(True, "MoCo v2: add the swapped loss (view 2 asks, view 1 answers) and enqueue both views' "
                            "keys, as the MoCo CIFAR-10 demo does (False: the paper's one-way loss, one query per image)")
    v3_momentum: float = param(0.9, "MoCo v3 key encoder EMA momentum at the start, rising to 1 on a cosine (paper "
                               "0.99; a short run learns the shape faster from a key encoder that keeps up)",
                               min=0.0, max=1.0)
    crop_min: float = param(1.0, "smallest crop, as a share of the image area (1 = no crop; SimCLR 0.08, which the "
                            "full preset takes: on 32 px scenes crops cut the objects off and, in minutes of "
                            "training, cost shape accuracy)", min=0.01, max=1.0)
    jitter_strength: float = param(0.0, "colour distortion strength s of SimCLR (CIFAR 0.5, the full preset's; 0 = no "
                                   "colour jitter and no greyscale)", min=0.0, max=2.0)
    tone_p: float = param(1.0, "probability of a random tone curve per colour channel in each view: it breaks the "
                          "colours of a scene and the relations between them, which jitter keeps (0 = off, the "
                          "full preset's)", min=0.0, max=1.0)
    ablation_epochs: int = param(1, "epochs of each run of the collapse, batch-size, queue-size and augmentation "
                                 "experiments", min=1)
    sweep_n_train: int = param(0, "training images of each short run of those experiments, the first of the training "
                               "set (0 = all); a grid file in sweeps/ runs them at full budget instead", min=0)
    shapes_epochs: int = param(1, "epochs of each method on shapes, for the probe of every attribute of the scenes",
                               min=1)
    shapes_n_train: int = param(0, "training scenes of the second half of the chapter, on shapes (0 = n_train)",
                                min=0)


@dataclass
class MIMConfig(TrainConfig):
    """Chapter 05: masked image modeling -- MAE, SimMIM, MaskFeat (HOG targets), BEiT (visual tokens)."""

    CHAPTER: ClassVar[str] = "05_mim"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=512, n_test=256, epochs=2, batch_size=64, finetune_epochs=2, finetune_n_train=256,
                      layer_decay=1.0, shapes_n_train=256),
        "lab": dict(n_train=8000, n_test=2000, epochs=3, batch_size=128, finetune_epochs=40, finetune_n_train=800,
                    layer_decay=1.0, shapes_n_train=4000, shapes_epochs=3),
        "full": dict(n_train=50000, n_test=10000, epochs=200, batch_size=256, backbone="vit-tiny", finetune_epochs=100,
                     finetune_n_train=5000, layer_decay=0.75, shapes_epochs=50),
    }
    dataset: str = param("fashion-mnist", "the data set of the headline: each method probed and fine-tuned with few "
                         "labels against a ViT from scratch (shapes where it is missing); the reconstruction pictures "
                         "train MAE on shapes too", choices=DATASET_NAMES)
    backbone: str = param("vit-nano", "a ViT preset (vit-nano on a CPU, vit-tiny on a GPU): masking works on patches",
                          choices=("vit-nano", "vit-tiny"))
    lr: float = param(1.5e-3, "peak AdamW learning rate of pre-training (MAE: blr 1.5e-4 x batch 2048 / 256, "
                      "smaller models take larger steps)", min=MIN_LR)
    method: str = param("mae", "what the command-line job pre-trains (all: the four, one table); the notebook "
                        "trains all four", choices=("mae", "simmim", "maskfeat", "beit", "all"))
    mask_ratio: float = param(0.75, "MAE: share of patches hidden from the encoder (paper: 0.75)", min=0.0, max=0.95)
    mask_token_ratio: float = param(0.6, "SimMIM, MaskFeat, BEiT: share of patches replaced by the mask token "
                                    "(SimMIM 0.6; MaskFeat and BEiT use 0.4)", min=0.0, max=0.95)
    mask_block: int = param(2, "SimMIM, MaskFeat, BEiT mask squares of this many patches a side (1 = single patches)",
                            min=1)
    decoder_dim: int = param(64, "MAE decoder width (a narrow decoder leaves the work to the encoder)", min=16)
    decoder_depth: int = param(2, "MAE decoder blocks (the paper shows 1 block already fine-tunes well)", min=1)
    norm_pix_loss: bool = param(True, "MAE: predict each patch normalised by its own mean and std (sharper features)")
    hog_bins: int = param(9, "MaskFeat: HOG orientation bins over 180 degrees", min=2)
    codebook_size: int = param(64, "BEiT: visual tokens in the k-means codebook", min=2)
    finetune_epochs: int = param(1, "epochs of every fine-tuning run (pre-trained and from scratch alike)", min=1)
    finetune_n_train: int = param(512, "labelled images for fine-tuning and probes, the first of the training set "
                                  "(0 = all n_train; lab and full: a tenth, the low-label protocol)", min=0)
    shapes_epochs: int = param(1, "epochs of the MAE run on shapes, for the reconstruction pictures", min=1)
    shapes_n_train: int = param(0, "training scenes of the MAE run on shapes (0 = n_train)", min=0)
    finetune_lr: float = param(2e-3, "peak learning rate of fine-tuning (pre-trained and from scratch alike)",
                               min=MIN_LR)
    layer_decay: float = param(1.0, "fine-tuning: block i of L trains at lr x layer_decay^(L - i) (MAE 0.65-0.75, "
                               "BEiT 0.65); 1 = off. It pays after long pre-training; after minutes it slows learning",
                               min=0.05, max=1.0)

    def validate(self) -> None:
        super().validate()
        check_finetune_n_train(self)
        grid = self.image_size // DEFAULT_PATCH_SIZE  # patches a side (check_patches: it divides)
        if grid % self.mask_block:
            blocks = ", ".join(str(b) for b in range(1, grid + 1) if grid % b == 0)
            raise ConfigError(f"mask_block={self.mask_block} does not divide the {grid}x{grid} patches of "
                              f"image_size={self.image_size}; choose one of {blocks}")
        for name in ("mask_ratio", "mask_token_ratio"):
            if getattr(self, name) == 0:
                raise ConfigError(f"{name}=0.0 hides no patch, so there is nothing to predict; choose a share above 0 "
                                  f"(MAE 0.75, SimMIM 0.6, MaskFeat and BEiT 0.4)")
        if self.n_train and self.codebook_size > self.n_train * grid * grid:
            raise ConfigError(f"codebook_size={self.codebook_size} is more than the {self.n_train * grid * grid} "
                              f"patches of n_train={self.n_train} images that BEiT's k-means clusters; "
                              f"choose at most that")


@dataclass
class NonContrastiveConfig(TrainConfig):
    """Chapter 04: non-contrastive self-supervision -- BYOL, SimSiam, DINO; collapse and how each avoids it."""

    CHAPTER: ClassVar[str] = "04_non_contrastive"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=512, n_test=256, epochs=2, batch_size=128, ablation_epochs=1, attention_epochs=1,
                      teacher_temp=0.02, warmup_teacher_temp=0.02),
        "lab": dict(n_train=8000, n_test=2000, epochs=4, batch_size=32, ablation_epochs=2, attention_epochs=1,
                    teacher_temp=0.02, warmup_teacher_temp=0.02, shapes_n_train=2000),
        "full": dict(n_train=50000, n_test=10000, epochs=200, batch_size=512, backbone="resnet18", hidden_dim=2048,
                     proj_dim=256, out_dim=8192, n_local=6, dino_backbone="vit-tiny", ablation_epochs=30,
                     attention_epochs=100, crop_min=0.2),  # SimSiam's crops (BYOL 0.08, DINO's global 0.4)
    }
    dataset: str = param("fashion-mnist", "the data set of the headline, each method against the random backbone "
                         "(shapes where it is missing); the second half of the chapter trains on shapes",
                         choices=DATASET_NAMES)
    batch_size: int = param(128, "images per step and process: the projector's BatchNorm and DINO's centre are "
                            "batch statistics, so at least 2", min=2)
    lr: float = param(3e-3, "peak AdamW learning rate after warm-up", min=MIN_LR)
    method: str = param("byol", "what the command-line job pre-trains; the notebook trains all three",
                        choices=("byol", "simsiam", "dino"))
    proj_dim: int = param(128, "BYOL and SimSiam: output size of the projector and predictor (BYOL 256, SimSiam 2048)",
                          min=2)
    hidden_dim: int = param(512, "hidden width of the projector, predictor and DINO head MLP (papers 2048-4096)", min=2)
    pred_dim: int = param(64, "SimSiam: bottleneck of the predictor (paper 512, a quarter of proj_dim)", min=1)
    momentum: float = param(0.99, "BYOL target and DINO teacher EMA momentum at the start, rising to 1 on a cosine "
                            "(papers 0.996; short runs want a faster target)", min=0.0, max=1.0)
    out_dim: int = param(256, "DINO: scores K of the head, the size of the softmax (paper 65536; a short run on "
                         "8 shape classes learns more from a few hundred)", min=2)
    teacher_temp: float = param(0.04, "DINO teacher temperature after warm-up: lower sharpens more; raise towards "
                                "0.07 if training is unstable (paper 0.04-0.07; the smoke and lab presets take 0.02: "
                                "a short run with a small head learns more from a sharper teacher)", min=0.001,
                                max=10.0)
    warmup_teacher_temp: float = param(0.04, "DINO teacher temperature at the start of the warm-up", min=0.001,
                                       max=10.0)
    teacher_temp_warmup: float = param(0.0, "DINO: share of the steps over which the teacher temperature rises "
                                       "linearly from warmup_teacher_temp to teacher_temp", min=0.0, max=1.0)
    student_temp: float = param(0.1, "DINO student temperature (paper 0.1)", min=0.001, max=10.0)
    center_momentum: float = param(0.9, "DINO center EMA momentum (paper 0.9)", min=0.0, max=1.0)
    n_local: int = param(2, "DINO local crops per image (paper 6-10); each costs about a quarter of a global view",
                         min=0)
    local_size: int = param(16, "DINO local crop side in pixels (paper 96 against 224 for the global crops); ViT "
                            "backbones take their own image size", min=8)
    crop_min: float = param(1.0, "smallest crop, as a share of the image area (1 = no crop; papers 0.08-0.4, the full "
                            "preset 0.2: on 32 px scenes crops cut the objects off and, in minutes of training, cost "
                            "shape accuracy); DINO's local crops keep their own range", min=0.01, max=1.0)
    jitter_strength: float = param(1.0, "scales the colour jitter of each method (1 = the paper, 0 = no colour jitter "
                                   "and no greyscale)", min=0.0, max=2.0)
    tone_p: float = param(0.0, "probability of a random tone curve per colour channel in each view (chapter 03's "
                          "views; without negatives it starves a short run of signal, see the notebook; 0 = off)",
                          min=0.0, max=1.0)
    dino_backbone: str = param("vit-nano", "the ViT that DINO trains for the attention maps",
                               choices=("vit-nano", "vit-tiny"))
    attention_epochs: int = param(1, "epochs of the DINO ViT run for the attention maps", min=1)
    ablation_epochs: int = param(1, "epochs of each run of the collapse and augmentation experiments", min=1)
    shapes_epochs: int = param(1, "epochs of each method on shapes, for the probe of every attribute of the scenes",
                               min=1)
    shapes_n_train: int = param(0, "training scenes of the second half of the chapter, on shapes (0 = n_train)",
                                min=0)
    clip_grad: float = param(3.0, "largest gradient norm per step (0 = no clipping; DINO's code clips at 3: a sharp "
                             "teacher can make rare huge gradients)", min=0.0)

    def train_kwargs(self) -> dict[str, Any]:
        return {**super().train_kwargs(), "clip_grad": self.clip_grad}

    def validate(self) -> None:
        super().validate()
        check_patches(self, "dino_backbone")
        if self.local_size > self.image_size:
            raise ConfigError(f"local_size={self.local_size} is larger than image_size={self.image_size}: DINO's local "
                              f"crops are small views of a part of the image; choose at most {self.image_size}")



@dataclass
class SynergyConfig(TwoTowerConfig):
    """Chapter 06: the kinds of supervision combined -- UniCL, LiT, SLIP, FLIP, masked modeling with CLIP targets."""

    CHAPTER: ClassVar[str] = "06_synergy"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=256, n_test=128, epochs=1, batch_size=64, tower_epochs=1, flip_epochs=1, bench_steps=1,
                      mim_epochs=1, finetune_epochs=1, finetune_n_train=128),
        "lab": dict(n_train=8000, n_test=1000, epochs=3, batch_size=128, tower_epochs=5, flip_epochs=3, bench_steps=10,
                    mim_epochs=3, finetune_epochs=20, finetune_n_train=800),
        "full": dict(n_train=100000, n_test=5000, epochs=30, batch_size=512, backbone="resnet18", vit="vit-tiny",
                     text_tower="scratch-b", embed_dim=256, tower_epochs=30, flip_epochs=30, bench_steps=50,
                     mim_epochs=100, finetune_epochs=50, finetune_n_train=10000),
    }
    dataset: str = param("shapes", "the image-caption pairs: shapes, whose scenes also carry the class labels (UniCL, "
                         "LiT's supervised tower) and the attributes (the probes, the held-out combinations) of every "
                         "comparison here", choices=("shapes",))
    part: str = param("all", "what the command-line job measures (the notebook: all): the CLIP / SLIP / UniCL table, "
                      "LiT against a locked text tower, FLIP's masking ratios, masked modeling with CLIP targets "
                      "against MAE", choices=("all", "compare", "lit", "flip", "mim"))
    label_share: float = param(0.5, "UniCL: share of the training scenes that carry their shape class as a prompt "
                               "instead of their caption (the image-label data of the union)", min=0.0, max=1.0)
    ssl_scale: float = param(1.0, "SLIP: weight of the SimCLR loss next to CLIP's (paper 1)", min=0.0)
    ssl_temperature: float = param(0.1, "SLIP: temperature of the SimCLR loss (paper 0.1)", min=0.01, max=10.0)
    tower_epochs: int = param(1, "LiT: epochs of the supervised image tower trained here when no chapter 01 run with "
                              "this run's data, size, backbone and seed is in the runs folder", min=1)
    vit: str = param("vit-nano", "the ViT of FLIP's image tower and of the masked-modeling students",
                     choices=("vit-nano", "vit-tiny"))
    flip_epochs: int = param(1, "FLIP: epochs of each run, at every masking ratio", min=1)
    unmask_epochs: int = param(1, "FLIP: epochs of the unmasked tuning at the end (every patch, the same pairs)",
                               min=1)
    bench_steps: int = param(5, "FLIP: training steps timed at each masking ratio, for the pairs per second", min=1)
    mim_epochs: int = param(1, "epochs of the masked-modeling students (CLIP targets and MAE alike)", min=1)
    mim_mask_ratio: float = param(0.4, "CLIP-target student: share of patches replaced by the mask token (BEiT v2: "
                                  "40 %, block-wise); MAE keeps its own 75 %", min=0.05, max=0.95)
    mim_loss: str = param("cosine", "CLIP-target student: cosine (MVP, EVA) or smooth_l1 on the unit-length features",
                          choices=("cosine", "smooth_l1"))
    finetune_n_train: int = param(512, "labelled scenes for the students' probes and fine-tuning, the first of the "
                                  "training set (0 = all n_train)", min=0)
    finetune_epochs: int = param(1, "epochs of every fine-tuning run of the students", min=1)
    finetune_lr: float = param(2e-3, "peak learning rate of fine-tuning", min=MIN_LR)
    layer_decay: float = param(1.0, "fine-tuning: block i of L trains at lr x layer_decay^(L - i); 1 = off",
                               min=0.05, max=1.0)

    def validate(self) -> None:
        super().validate()
        check_patches(self, "vit")
        check_finetune_n_train(self)
        if self.text_tower == "minilm-locked":
            raise ConfigError("text_tower='minilm-locked': the chapter compares it with LiT itself; choose a text "
                              "tower that trains (scratch-s, scratch-b)")


@dataclass
class FusionConfig(TrainConfig):
    """Chapter 07: fusion -- a CoCa that captions, matches (ALBEF's ITM) and answers questions."""

    CHAPTER: ClassVar[str] = "07_fusion"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=384, n_test=128, epochs=1, batch_size=64),
        "lab": dict(n_train=8000, n_test=500, epochs=3, batch_size=128, image_size=64),
        "full": dict(n_train=100000, n_test=5000, epochs=30, batch_size=512, backbone="resnet18", image_size=64,
                     width=512, heads=8, text_layers=6, decoder_layers=6, embed_dim=256),
    }
    dataset: str = param("shapes", "image-caption-question data: shapes, or icon-scenes (icons of icon_set pasted on "
                         "photographed textures; build the icon set first: bash data_scripts/fetch.sh emoji)",
                         choices=("shapes", "icon-scenes"))
    icon_set: str = param("emoji", "icon-scenes: whose icons are pasted", choices=ICON_SETS)
    lr: float = param(2e-3, "peak AdamW learning rate after warm-up", min=MIN_LR)
    weight_decay: float = param(0.1, "AdamW weight decay (not on biases, norms and the temperature)", min=0.0)
    part: str = param("all", "what the command-line job measures (the notebook: all): CoCa and its evaluations; or "
                      "also CoCa without its decoder (plain CLIP on the same towers) at the same budget",
                      choices=("all", "coca"))
    embed_dim: int = param(128, "size of the joint image-text embedding of the contrastive loss", min=8)
    width: int = param(128, "width of the text tower and of the multimodal decoder", min=8)
    heads: int = param(4, "attention heads of the text tower and the decoder", min=1)
    text_layers: int = param(2, "layers of the unimodal text tower (CoCa's first half of the decoder)", min=1)
    decoder_layers: int = param(2, "layers of the multimodal decoder, each causal self-attention then "
                                "cross-attention to the image tokens", min=1)
    context_length: int = param(32, "text tokens per caption or question (shapes captions need at most 31)",
                                min=8, max=77)
    contrastive_weight: float = param(1.0, "weight of the contrastive loss (CoCa: 1)", min=0.0)
    caption_weight: float = param(2.0, "weight of the captioning loss (CoCa: 2)", min=0.0)
    qa_weight: float = param(1.0, "weight of the captioning loss on question-answer texts (answer tokens only)",
                             min=0.0)
    itm_weight: float = param(1.0, "weight of ALBEF's image-text matching loss on hard negatives", min=0.0)
    beam_width: int = param(3, "beam search: continuations kept per image (1 = greedy)", min=1)
    max_caption_tokens: int = param(24, "longest caption the decoder writes, in tokens", min=1)

    def validate(self) -> None:
        super().validate()
        check_patches(self, "backbone")
        if self.width % self.heads:
            raise ConfigError(f"width={self.width} is not divisible by heads={self.heads}; each head takes an equal "
                              f"share of the width: choose heads among {[h for h in range(1, 17) if self.width % h == 0]}")
        if self.max_caption_tokens >= self.context_length:
            raise ConfigError(f"max_caption_tokens={self.max_caption_tokens} does not fit context_length="
                              f"{self.context_length} after <start>; choose at most {self.context_length - 1}")
        if self.contrastive_weight + self.caption_weight + self.qa_weight + self.itm_weight == 0:
            raise ConfigError("every loss weight is 0: nothing would train; set contrastive_weight, caption_weight, "
                              "qa_weight or itm_weight above 0")

    def model_kwargs(self) -> dict[str, Any]:
        """The arguments of :class:`~vfm_lab.methods.coca.CoCa` that this config sets."""
        return dict(embed_dim=self.embed_dim, width=self.width, heads=self.heads, text_layers=self.text_layers,
                    decoder_layers=self.decoder_layers, context_length=self.context_length,
                    contrastive_weight=self.contrastive_weight, caption_weight=self.caption_weight,
                    qa_weight=self.qa_weight, itm_weight=self.itm_weight)


@dataclass
class SceneConfig(TwoTowerConfig):
    """What the region and pixel chapters (08, 09) share: scenes of several objects with boxes, masks and phrases,
    and chapter 02's CLIP towers, the text tower locked."""

    dataset: str = param("shapes", "scenes with boxes, masks and phrases: shapes, or icon-scenes (icons of icon_set "
                         "pasted on photographed textures; build the icon set first: bash data_scripts/fetch.sh emoji)",
                         choices=("shapes", "icon-scenes"))
    icon_set: str = param("emoji", "icon-scenes: whose icons are pasted", choices=ICON_SETS)
    text_tower: str = param("scratch-s", "the text encoder, locked: scratch-s / scratch-b: chapter 02's CLIP text "
                            "tower (its run when there is one, else trained here); minilm-locked: all-MiniLM-L6-v2 with "
                            "chapter 02's projection (the image tower comes from the same CLIP run)",
                            choices=("scratch-s", "scratch-b", "minilm-locked"))
    tower_epochs: int = param(1, "epochs of CLIP on the scenes' captions when chapter 02 has no run to load", min=1)
    backbone_lr_scale: float = param(1.0, "learning rate of the pretrained image tower and its projection, as a share "
                                     "of lr (0.1 grounded no better at lab, 6 epochs: the shapes need new features)",
                                     min=0.0, max=1.0)
    max_objects: int = param(4, "objects per scene, at most (the icon scenes: at most 3)", min=1, max=4)

    def validate(self) -> None:
        super().validate()
        if self.dataset == "icon-scenes" and self.max_objects > ICON_SCENES_MAX_OBJECTS:
            raise ConfigError(f"max_objects={self.max_objects}: the icon scenes hold at most "
                              f"{ICON_SCENES_MAX_OBJECTS} icons; choose 1 to {ICON_SCENES_MAX_OBJECTS}")


@dataclass
class RegionConfig(SceneConfig):
    """Chapter 08: region level -- phrase grounding and open-vocabulary detection (GLIP / OWL-ViT in miniature)."""

    CHAPTER: ClassVar[str] = "08_region"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=512, n_test=128, epochs=2, batch_size=64, tower_epochs=1),
        "lab": dict(n_train=8000, n_test=500, epochs=36, batch_size=128, tower_epochs=3),
        "full": dict(n_train=100000, n_test=5000, epochs=30, batch_size=256, backbone="resnet18", image_size=64,
                     tower_epochs=30, width=256),
    }
    lr: float = param(2e-3, "peak AdamW learning rate after warm-up (the pretrained image tower: backbone_lr_scale "
                      "of it)", min=MIN_LR)
    weight_decay: float = param(0.05, "AdamW weight decay (not on biases, norms, scale and bias)", min=0.0)
    part: str = param("all", "what the command-line job measures (the notebook: all): the grounder with text_tower; or "
                      "also the same grounder on the other text encoder (scratch <-> minilm-locked)",
                      choices=("all", "grounder"))
    width: int = param(128, "channels of the feature pyramid and of the box head", min=8)
    box_weight: float = param(2.0, "weight of the box loss (GIoU + L1) against the alignment loss", min=0.0)
    radius: float = param(0.75, "a cell within this many strides of an object's centre (and inside its box) is one "
                          "of its positives (the nearest cell always is)", min=0.1)

    def model_kwargs(self) -> dict[str, Any]:
        """The arguments of :class:`~vfm_lab.methods.glip.Grounder` that this config sets."""
        return dict(width=self.width, box_weight=self.box_weight, radius=self.radius)


@dataclass
class PixelConfig(SceneConfig):
    """Chapter 09: pixel level -- a promptable segmenter (SAM in miniature) and open-vocabulary segmentation (LSeg)."""

    CHAPTER: ClassVar[str] = "09_pixel"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(dataset="shapes", n_train=256, n_test=64, epochs=2, batch_size=32, seg_epochs=1, tower_epochs=1),
        "lab": dict(n_train=4000, n_test=500, epochs=20, batch_size=64, seg_epochs=10, tower_epochs=3),
        "full": dict(n_train=100000, n_test=5000, epochs=20, batch_size=256, image_size=64, seg_epochs=20,
                     tower_epochs=30, dim=128, width=128),
    }
    dataset: str = param("icon-scenes", "scenes with instance masks: icon-scenes (icons of icon_set pasted on "
                         "photographed textures; build the icon set first: bash data_scripts/fetch.sh emoji), or shapes "
                         "(flat-coloured: a colour flood fill segments them almost perfectly)",
                         choices=("shapes", "icon-scenes"))
    max_objects: int = param(3, "objects per scene, at most (the icon scenes: at most 3)", min=1, max=4)
    backbone: str = param("convnet-s", "a backbone whose feature pyramid has stride 4, which the mask decoder upsamples "
                          "4x to the image size (resnet18's has stride 2)", choices=("convnet-s", "vit-nano", "vit-tiny"))
    lr: float = param(3e-3, "peak AdamW learning rate after warm-up", min=MIN_LR)
    weight_decay: float = param(0.05, "AdamW weight decay (not on biases and norms)", min=0.0)
    part: str = param("all", "what the command-line job measures (the notebook: all): all, the promptable and the "
                      "open-vocabulary segmenter; prompts, the promptable segmenter only", choices=("all", "prompts"))
    dim: int = param(64, "channels of the image embedding, the prompt tokens and the mask decoder (a multiple of 8 "
                     "and of heads)", min=8)
    depth: int = param(2, "blocks of the mask decoder's two-way transformer", min=1)
    heads: int = param(4, "attention heads of the mask decoder", min=1)
    mlp_dim: int = param(256, "hidden units of the mask decoder's MLPs", min=8)
    clicks: int = param(2, "prompts per object in training: a point or a box, then points from the error region",
                        min=1, max=8)
    box_noise: float = param(0.1, "training boxes are jittered by this share of their side (SAM: 0.1)", min=0.0,
                             max=0.5)
    seg_epochs: int = param(10, "epochs of the open-vocabulary segmenter", min=1)
    width: int = param(64, "channels of the open-vocabulary segmenter's feature pyramid", min=8)

    def validate(self) -> None:
        super().validate()
        if self.dim % self.heads or self.dim % 8:
            raise ConfigError(f"dim={self.dim} must be a multiple of 8 and of heads={self.heads}")

    def sam_kwargs(self) -> dict[str, Any]:
        """The arguments of :class:`~vfm_lab.methods.sam.PromptableSegmenter` that this config sets."""
        return dict(dim=self.dim, depth=self.depth, heads=self.heads, mlp_dim=self.mlp_dim, clicks=self.clicks,
                    box_noise=self.box_noise)


CONFIGS: dict[str, type[LabConfig]] = {c.CHAPTER: c for c in (TourConfig, SupervisedConfig, ClipConfig,
                                                               ContrastiveConfig, NonContrastiveConfig, MIMConfig,
                                                               SynergyConfig, FusionConfig, RegionConfig,
                                                               PixelConfig)}
