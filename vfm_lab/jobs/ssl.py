"""Chapters 03 and 04: contrastive (SimCLR, MoCo) and non-contrastive (BYOL, SimSiam, DINO) pre-training."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from vfm_lab import augment as A
from vfm_lab import distributed as D
from vfm_lab.augment import Augment
from vfm_lab.backbones import Backbone
from vfm_lab.config import ContrastiveConfig, NonContrastiveConfig, SupervisedConfig, TrainConfig
from vfm_lab.evaluate import evaluate_backbone, write_results
from vfm_lab.jobs.common import load_splits, on_available_data, pretrain, random_init_baseline, train
from vfm_lab.jobs.supervised import build_supervised
from vfm_lab.methods.byol import BYOL
from vfm_lab.methods.dino import DINO
from vfm_lab.methods.moco import MoCoV2, MoCoV3
from vfm_lab.methods.simclr import SimCLR
from vfm_lab.methods.simsiam import SimSiam, simsiam_views


# ---- both chapters ------------------------------------------------------------------------
def supervised_reference(cfg: TrainConfig) -> dict[str, Any]:
    """What labels give at the same budget: chapter 01's recipe (cross-entropy, flips, its batch size and
    learning rate) on ``cfg``'s backbone, images and epochs, evaluated as :func:`pretrain` evaluates a
    self-supervised backbone. Written to ``results.json`` as ``supervised``."""
    recipe = SupervisedConfig.from_params(scale=cfg.scale, backbone=cfg.backbone, seed=cfg.seed, device=cfg.device,
                                          precision=cfg.precision, out_dir=cfg.out_dir)
    train_set, test = load_splits(cfg)
    model = build_supervised(recipe, train_set)
    run = train(cfg, model, "supervised", train_set, batch_size=min(recipe.batch_size, len(train_set)), lr=recipe.lr,
                weight_decay=recipe.weight_decay, progress=False)
    if not D.is_main():
        return {}
    run.metrics.update(evaluate_backbone(run.method.backbone, train_set, test))
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), "supervised": run.metrics})
    return run.metrics


def ssl_job(cfg: Any, build: Callable[[Any, Backbone], nn.Module]) -> dict[str, Any]:
    """The command-line job of chapters 03 and 04: on Fashion-MNIST where the config names it and this machine
    has it (else ``shapes``, with a line that says so), the random backbone, ``cfg.method`` pre-trained with
    :func:`pretrain` and the :func:`supervised_reference`, each under its name."""
    cfg, data_line = on_available_data(cfg)
    print(data_line)
    metrics = {"random_init": random_init_baseline(cfg)}
    metrics[cfg.method] = pretrain(cfg, lambda backbone: build(cfg, backbone), cfg.method).metrics
    metrics["supervised"] = supervised_reference(cfg)
    return metrics


# ---- chapter 03: contrastive self-supervision --------------------------------------------
def tuned_views(aug: Augment, crop_min: float | None, jitter_strength: float, tone_p: float = 0.0) -> Augment:
    """A method's view recipe with crops of ``crop_min``-100 % (None: its own crop range), its
    colour jitter scaled by ``jitter_strength`` (0: no colour jitter and no greyscale) and a random
    tone curve (:func:`vfm_lab.augment.tone_curve`) with probability ``tone_p``."""
    s = jitter_strength
    return dataclasses.replace(aug, crop_scale=aug.crop_scale if crop_min is None else (crop_min, 1.0), tone_p=tone_p,
                               brightness=aug.brightness * s, contrast=aug.contrast * s,
                               saturation=aug.saturation * s, hue=min(aug.hue * s, 0.5),
                               jitter_p=aug.jitter_p if s > 0 else 0.0, grayscale_p=aug.grayscale_p if s > 0 else 0.0)


def contrastive_views(size: int, crop_min: float, jitter_strength: float, tone_p: float = 0.0) -> Augment:
    """SimCLR's CIFAR recipe (crop, flip, colour distortion of strength s: jitter with p = 0.8 and
    greyscale with p = 0.2; no blur) with crops of ``crop_min``-100 % of the image and a random tone
    curve with probability ``tone_p``."""
    return tuned_views(A.simclr(size, blur_p=0.0), crop_min, jitter_strength, tone_p)


def build_contrastive(cfg: ContrastiveConfig, backbone: Backbone, method: str | None = None,
                      **overrides: Any) -> nn.Module:
    """``cfg.method`` (or ``method``) on ``backbone`` with the config's hyper-parameters and views;
    ``overrides`` replace constructor arguments (``queue_size=...``, ``augment=...``)."""
    method = method or cfg.method
    builders = {"simclr": SimCLR, "moco_v2": MoCoV2, "moco_v3": MoCoV3}
    if method not in builders:
        raise ValueError(f"method={method!r} is not a contrastive method; choose one of {', '.join(builders)}")
    views = contrastive_views(backbone.image_size, cfg.crop_min, cfg.jitter_strength, cfg.tone_p)
    kw: dict[str, Any] = dict(proj_dim=cfg.proj_dim, hidden_dim=cfg.hidden_dim, temperature=cfg.temperature,
                              augment=views)
    if method == "moco_v2":
        kw.update(queue_size=cfg.queue_size, momentum=cfg.momentum, symmetric=cfg.symmetric)
    if method == "moco_v3":
        kw.update(momentum=cfg.v3_momentum, proj_layers=2)  # 2 layers for a convnet, as the paper's ResNet
    return builders[method](backbone, **{**kw, **overrides})


def train_contrastive(cfg: ContrastiveConfig) -> dict[str, Any]:
    """Chapter 03's command-line job (:func:`ssl_job`)."""
    return ssl_job(cfg, build_contrastive)


# ---- chapter 04: non-contrastive self-supervision -----------------------------------------
NON_CONTRASTIVE = ("byol", "simsiam", "dino")


def build_non_contrastive(cfg: NonContrastiveConfig, backbone: Backbone, method: str | None = None,
                          **overrides: Any) -> nn.Module:
    """BYOL, SimSiam or DINO (``cfg.method`` or ``method``) on ``backbone`` with the config's
    hyper-parameters and each paper's views, cropped and jittered as the config says;
    ``overrides`` replace constructor arguments (``predictor=False``, ``centering=False``, ...)."""
    method, size = method or cfg.method, backbone.image_size

    def tuned(aug: Augment) -> Augment:
        return tuned_views(aug, cfg.crop_min, cfg.jitter_strength, cfg.tone_p)

    if method == "byol":
        kw = dict(proj_dim=cfg.proj_dim, hidden_dim=cfg.hidden_dim, momentum=cfg.momentum,
                  augment=(tuned(A.byol_view1(size)), tuned(A.byol_view2(size))))
        return BYOL(backbone, **{**kw, **overrides})
    if method == "simsiam":
        kw = dict(proj_dim=cfg.proj_dim, pred_dim=cfg.pred_dim, augment=tuned(simsiam_views(size)))
        return SimSiam(backbone, **{**kw, **overrides})
    if method == "dino":
        convnet = backbone.patch_size is None
        local_size = cfg.local_size if convnet else size  # a timm ViT preset takes one image size
        kw = dict(out_dim=cfg.out_dim, hidden_dim=cfg.hidden_dim, bottleneck_dim=min(256, cfg.hidden_dim),
                  use_bn_in_head=convnet,  # without BN the head of a small convnet drifts to a uniform teacher
                  teacher_temp=cfg.teacher_temp, warmup_teacher_temp=cfg.warmup_teacher_temp,
                  teacher_temp_warmup=cfg.teacher_temp_warmup, student_temp=cfg.student_temp,
                  center_momentum=cfg.center_momentum, momentum=cfg.momentum, n_local=cfg.n_local,
                  local_size=local_size, augment=tuple(map(tuned, A.dino_global(size))),
                  local_augment=tuned_views(A.dino_local(local_size), None, cfg.jitter_strength, cfg.tone_p))
        return DINO(backbone, **{**kw, **overrides})
    raise ValueError(f"method={method!r} is not a non-contrastive method; choose one of {', '.join(NON_CONTRASTIVE)}")


def train_non_contrastive(cfg: NonContrastiveConfig) -> dict[str, Any]:
    """Chapter 04's command-line job (:func:`ssl_job`)."""
    return ssl_job(cfg, build_non_contrastive)
