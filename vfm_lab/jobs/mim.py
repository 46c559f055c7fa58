"""Chapter 05's job: masked image modeling, probed and fine-tuned against a random backbone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vfm_lab import distributed as D
from vfm_lab.backbones import Backbone, build_backbone
from vfm_lab.config import MIMConfig
from vfm_lab.data import ImageSet
from vfm_lab.engine import Method
from vfm_lab.evaluate import evaluate_backbone, finetune, write_results
from vfm_lab.jobs.common import fresh_backbone, load_splits, supervised_augment, train
from vfm_lab.methods.beit import BEiT, PatchTokenizer
from vfm_lab.methods.mae import MAE, reconstruction_vs_mean_patch
from vfm_lab.methods.maskfeat import MaskFeat
from vfm_lab.methods.simmim import SimMIM


MIM_METHODS = ("mae", "simmim", "maskfeat", "beit")


def build_mim(cfg: MIMConfig, name: str, data: ImageSet) -> Method:
    """Masked image model ``name`` around a fresh ``cfg.backbone``; BEiT's tokenizer is fitted
    on ``data`` (k-means) first."""
    backbone = build_backbone(cfg.backbone, data.channels, data.image_size)
    if name == "mae":
        return MAE(backbone, cfg.mask_ratio, cfg.decoder_dim, cfg.decoder_depth, norm_pix_loss=cfg.norm_pix_loss)
    if name == "simmim":
        return SimMIM(backbone, cfg.mask_token_ratio, cfg.mask_block)
    if name == "maskfeat":
        return MaskFeat(backbone, cfg.mask_token_ratio, cfg.mask_block, bins=cfg.hog_bins)
    if name == "beit":
        tokenizer = PatchTokenizer(cfg.codebook_size, backbone.patch_size, data.channels)
        return BEiT(backbone, tokenizer.fit(data.images.float() / 255, seed=cfg.seed), cfg.mask_token_ratio,
                    cfg.mask_block)
    raise ValueError(f"method={name!r} is not a masked image model; choose one of {', '.join(MIM_METHODS)}")


def probe_and_finetune(cfg: MIMConfig, backbone: Backbone, train: ImageSet, test: ImageSet,
                       out_dir: str | Path | None = None) -> dict[str, float]:
    """The chapter's two readings of a backbone on the first ``cfg.finetune_n_train`` labelled
    training images: frozen (kNN, linear probe) and fine-tuned end to end for ``cfg.finetune_epochs``
    (flips, ``cfg.finetune_lr``, ``cfg.layer_decay``); the same budget for a pre-trained and a random
    backbone."""
    labelled = train.subset(slice(0, cfg.finetune_n_train or len(train)))
    frozen = evaluate_backbone(backbone, labelled, test, attributes=False)
    tuned = finetune(backbone, labelled, test, epochs=cfg.finetune_epochs,
                     batch_size=min(cfg.batch_size, len(labelled)), lr=cfg.finetune_lr, layer_decay=cfg.layer_decay,
                     augment=supervised_augment(train.image_size), warmup_epochs=cfg.warmup_epochs,
                     weight_decay=cfg.weight_decay, device=cfg.device, precision=cfg.precision, seed=cfg.seed,
                     out_dir=out_dir, progress=False)
    return {"knn_acc": frozen["knn_acc"], "linear_acc": frozen["linear_acc"], "finetune_acc": tuned["test_acc"],
            "finetune_seconds": tuned["train_seconds"]}


def train_mim(cfg: MIMConfig) -> dict[str, Any]:
    """Fine-tune a random backbone (``scratch``), then pre-train ``cfg.method`` (``all``: the four in
    turn) and probe and fine-tune each backbone on the same budget, and for MAE measure held-out
    reconstruction against the mean patch. One ``results.json`` entry per backbone, written as each
    is done: the chapter's table (``vfm-lab leaderboard`` lays it out). ``pretrain_seconds`` counts
    this call only: a rerun that resumes a finished pre-training reports about 0."""
    train_set, test = load_splits(cfg)
    out = Path(cfg.out_dir)
    results = {}

    def report(name: str, metrics: dict[str, float]) -> None:
        if D.is_main():
            results[name] = metrics
            write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: metrics})

    # every rank fine-tunes (under torchrun the fine-tuning is data-parallel too); rank 0 reports
    scratch = fresh_backbone(cfg, train_set)
    report("scratch", probe_and_finetune(cfg, scratch, train_set, test, out / "scratch-finetune"))
    for name in MIM_METHODS if cfg.method == "all" else (cfg.method,):
        torch.manual_seed(cfg.seed)
        run = train(cfg, build_mim(cfg, name, train_set), name, train_set)
        metrics = {"pretrain_seconds": run.metrics["train_seconds"], "final_loss": run.metrics["final_loss"],
                   "world_size": run.metrics["world_size"],
                   **probe_and_finetune(cfg, run.method.backbone, train_set, test, out / f"{name}-finetune")}
        if name == "mae":
            metrics.update(reconstruction_vs_mean_patch(run.method, train_set, test, seed=cfg.seed))
        report(name, metrics)
    return results
