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
from vfm_lab.jobs.common import fresh_backbone, load_splits, on_available_data, supervised_augment, train
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


def mean_patch_probe(backbone: Backbone, train: ImageSet, test: ImageSet) -> float:
    """The linear probe on the mean of a ViT's patch tokens instead of its class token (timm's
    ``global_pool="avg"``): the four losses train the patch tokens, and this library's MAE decoder drops
    the class token (the official one carries it), so nothing asks the class token to summarise."""
    backbone.model.global_pool = "avg"
    try:
        return evaluate_backbone(backbone, train, test, attributes=False)["linear_acc"]
    finally:
        backbone.model.global_pool = "token"  # back to the backbone contract


def probes(cfg: MIMConfig, backbone: Backbone, train: ImageSet, test: ImageSet) -> dict[str, float]:
    """The frozen readings of a backbone with the first ``cfg.finetune_n_train`` labelled training images (a
    tenth of them at ``lab``: the low-label protocol): kNN and the linear probe on the class token, and the
    linear probe on the mean patch token (:func:`mean_patch_probe`)."""
    labelled = train.subset(slice(0, cfg.finetune_n_train or len(train)))
    frozen = evaluate_backbone(backbone, labelled, test, attributes=False)
    return {"knn_acc": frozen["knn_acc"], "linear_acc": frozen["linear_acc"],
            "linear_acc_mean_patch": mean_patch_probe(backbone, labelled, test)}


def finetune_low_label(cfg: MIMConfig, backbone: Backbone, train: ImageSet, test: ImageSet,
                       out_dir: str | Path | None = None) -> dict[str, Any]:
    """A copy of the backbone fine-tuned end to end on the same labelled images as :func:`probes`, for
    ``cfg.finetune_epochs`` (flips, ``cfg.finetune_lr``, ``cfg.layer_decay``), with the test accuracy
    along the way (``finetune_curve``, ten points): the same recipe for a pre-trained and a random backbone."""
    labelled = train.subset(slice(0, cfg.finetune_n_train or len(train)))
    tuned = finetune(backbone, labelled, test, epochs=cfg.finetune_epochs,
                     batch_size=min(cfg.batch_size, len(labelled)), lr=cfg.finetune_lr, layer_decay=cfg.layer_decay, augment=supervised_augment(train.image_size),
                     curve_every=max(1, cfg.finetune_epochs // 10), warmup_epochs=cfg.warmup_epochs,
                     weight_decay=cfg.weight_decay, device=cfg.device, precision=cfg.precision, seed=cfg.seed,
                     out_dir=out_dir, progress=False)
    return {"finetune_acc": tuned["test_acc"], "finetune_seconds": tuned["train_seconds"],
            "finetune_curve": tuned["curve"]}


def probe_and_finetune(cfg: MIMConfig, backbone: Backbone, train: ImageSet, test: ImageSet,
                       out_dir: str | Path | None = None) -> dict[str, Any]:
    """Both readings of a backbone: :func:`probes` and :func:`finetune_low_label`."""
    return {**probes(cfg, backbone, train, test), **finetune_low_label(cfg, backbone, train, test, out_dir)}


def train_mim(cfg: MIMConfig) -> dict[str, Any]:
    """On Fashion-MNIST where the config names it and this machine has it (else ``shapes``, with a line
    that says so): fine-tune a random backbone (``scratch``), then pre-train ``cfg.method`` (``all``: the
    four in turn) and probe and fine-tune each backbone on the same budget (:func:`probe_and_finetune`),
    and for MAE measure held-out reconstruction against the mean patch. One ``results.json`` entry per
    backbone, written as each is done: the chapter's table (``vfm-lab leaderboard`` lays it out).
    ``pretrain_seconds`` counts this call only: a rerun that resumes a finished pre-training reports
    about 0."""
    cfg, data_line = on_available_data(cfg)
    print(data_line)
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
