"""Chapter 01's job: label supervision, then the frozen-backbone evaluation."""
from __future__ import annotations

from pathlib import Path

from vfm_lab import distributed as D
from vfm_lab.backbones import build_backbone
from vfm_lab.config import SupervisedConfig
from vfm_lab.engine import fit
from vfm_lab.evaluate import accuracy, evaluate_backbone, write_results
from vfm_lab.jobs.common import load_splits, supervised_augment
from vfm_lab.methods.supervised import Classifier
from vfm_lab.runtime import seed_everything


def train_supervised(cfg: SupervisedConfig, loss: str = "ce") -> dict[str, float]:
    """Cross-entropy (or ``loss``) on ``cfg.dataset``'s class labels, then evaluation."""
    seed_everything(cfg.seed)
    train, test = load_splits(cfg)
    backbone = build_backbone(cfg.backbone, train.channels, train.image_size)
    method = Classifier(backbone, train.num_classes, loss, augment=supervised_augment(train.image_size),
                        margin=cfg.margin, scale=cfg.cosface_scale, num_sampled=cfg.num_sampled)
    result = fit(method, train, out_dir=Path(cfg.out_dir) / f"train-{loss}", **cfg.train_kwargs())
    if not D.is_main():
        return {}
    metrics = {"test_acc": accuracy(method, test), "train_seconds": result.seconds,
               "final_loss": result.final_loss, "world_size": D.world_size(),
               **evaluate_backbone(method.backbone, train, test)}
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), **metrics})
    return metrics
