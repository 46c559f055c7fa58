"""Chapter 01's job: label supervision, then the frozen-backbone evaluation."""
from __future__ import annotations

from typing import Any

from vfm_lab import distributed as D
from vfm_lab.backbones import Backbone, build_backbone
from vfm_lab.config import SupervisedConfig
from vfm_lab.data import ImageSet
from vfm_lab.evaluate import accuracy, evaluate_backbone, write_results
from vfm_lab.jobs.common import load_splits, supervised_augment, train
from vfm_lab.methods.supervised import Classifier
from vfm_lab.runtime import seed_everything


def build_supervised(cfg: SupervisedConfig, data: ImageSet, loss: str = "ce", backbone: Backbone | None = None,
                     **overrides: Any) -> Classifier:
    """A classifier for ``data``'s labels with the config's head settings (CosFace margin and scale, sampled
    classes) and flips, on a fresh ``cfg.backbone`` or on ``backbone``; the head is drawn from ``cfg.seed``.
    ``overrides`` replace constructor arguments (``num_classes=``, ``target=``)."""
    seed_everything(cfg.seed)
    backbone = backbone if backbone is not None else build_backbone(cfg.backbone, data.channels, data.image_size)
    kw: dict[str, Any] = dict(num_classes=data.num_classes, augment=supervised_augment(data.image_size),
                              margin=cfg.margin, scale=cfg.cosface_scale, num_sampled=cfg.num_sampled)
    kw.update(overrides)
    return Classifier(backbone, kw.pop("num_classes"), loss, **kw)


def train_supervised(cfg: SupervisedConfig, loss: str = "ce") -> dict[str, Any]:
    """Cross-entropy (or ``loss``) on ``cfg.dataset``'s class labels, then evaluation."""
    train_set, test = load_splits(cfg)
    run = train(cfg, build_supervised(cfg, train_set, loss), f"train-{loss}", train_set)
    if not D.is_main():
        return {}
    metrics = {"test_acc": accuracy(run.method, test), **run.metrics,
               **evaluate_backbone(run.method.backbone, train_set, test)}
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), **metrics})
    return metrics
