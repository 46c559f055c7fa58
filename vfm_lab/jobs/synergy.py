"""Chapter 06's job: the kinds of supervision combined, each read against CLIP at the same budget.

- :func:`compare_supervision`: CLIP vs SLIP (CLIP + SimCLR) vs UniCL (captions and labels in one space).
- :func:`lit_vs_locked_text`: LiT's locked image tower (chapter 01's supervised one) against chapter 02's locked
  text tower, and both from scratch (the CLIP row).
- :func:`flip_masking`: FLIP's pairs per second at each masking ratio, and what each costs in zero-shot accuracy
  before and after a short unmasked tuning.
- :func:`mim_students`: masked modeling with the CLIP image tower's features as targets against MAE's pixels,
  each ViT probed and fine-tuned with few labels.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from vfm_lab import distributed as D
from vfm_lab.backbones import Backbone
from vfm_lab.config import SupervisedConfig, SynergyConfig
from vfm_lab.data import ImageSet
from vfm_lab.evaluate import write_results
from vfm_lab.jobs.clip import clip_augment, clip_splits, format_table, table_row, train_clip
from vfm_lab.jobs.common import Run, fresh_backbone, load_splits, supervised_augment, train, weights_from
from vfm_lab.jobs.mim import probe_and_finetune
from vfm_lab.methods.clip import ClipModel
from vfm_lab.methods.clip_mim import ClipTargetMIM
from vfm_lab.methods.flip import FLIP
from vfm_lab.methods.lit import LiT
from vfm_lab.methods.mae import MAE
from vfm_lab.methods.slip import SLIP
from vfm_lab.methods.supervised import Classifier
from vfm_lab.methods.unicl import UniCL, unify
from vfm_lab.runtime import resolve_device, resolve_precision, train_steps_per_second

PAIR_MODELS = ("clip", "slip", "unicl", "lit", "locked-text")
COMPARE = ("clip", "slip", "unicl")  # the same image tower, budget and pairs
LIT_ROWS = {"lit": "Lu: locked image tower", "locked-text": "uL: locked text tower", "clip": "uu: both from scratch"}
FLIP_DROPS = (0.0, 0.5, 0.75)
SYNERGY_KEYS = ("zs_combo_acc", "zs_combo_chance", "zs_heldout_acc", "zs_heldout_chance", "zs_class_acc",
                "zs_prompt_acc", "zs_class_chance", "t2i_R@1", "retrieval_chance_R@1", "linear_acc", "knn_acc", "probe_colour",
                "train_seconds", "pairs_per_s")
MIM_KEYS = ("knn_acc", "linear_acc", "linear_acc_mean_patch", "finetune_acc", "pretrain_seconds")


def unicl_texts(cfg: SynergyConfig, data: ImageSet) -> tuple[list[str], torch.Tensor]:
    """UniCL's image-text-label triplets of ``data``: the first ``cfg.label_share`` of the scenes carry their
    shape class as a prompt ("a photo of a circle."), the others their captions (:func:`~vfm_lab.methods.unicl.unify`)."""
    n_labelled = round(cfg.label_share * len(data))
    return unify([None] * n_labelled + list(data.captions[n_labelled:]), data.labels.tolist(), data.classes)


def build_pair_model(cfg: SynergyConfig, data: ImageSet, name: str, backbone: Backbone | None = None) -> ClipModel:
    """The two-tower model ``name`` (one of :data:`PAIR_MODELS`) for ``data``'s pairs, on a fresh
    ``cfg.backbone`` or on ``backbone`` (LiT: the tower it locks)."""
    if name not in PAIR_MODELS:
        raise ValueError(f"model={name!r} is not one of chapter 06's two-tower models; choose one of "
                         f"{', '.join(PAIR_MODELS)}")
    backbone = backbone if backbone is not None else fresh_backbone(cfg, data)
    kw: dict[str, Any] = dict(augment=clip_augment(data.image_size), **cfg.tower_kwargs())
    if name == "slip":
        return SLIP(backbone, data.captions, ssl_scale=cfg.ssl_scale, ssl_temperature=cfg.ssl_temperature, **kw)
    if name == "unicl":
        return UniCL(backbone, *unicl_texts(cfg, data), **kw)
    if name == "lit":
        kw.pop("embed_dim")  # the locked tower's own width
        return LiT(backbone, data.captions, **kw)
    if name == "locked-text":
        kw["text_tower"] = "minilm-locked"
    return ClipModel(backbone, data.captions, **kw)


def synergy_table(runs: dict[str, dict[str, Any]], keys: tuple[str, ...] = SYNERGY_KEYS) -> dict[str, dict[str, float]]:
    """A row of the columns ``keys`` that each run's metrics have, the colour probe among them."""
    return {name: table_row({**m, "probe_colour": m.get("probe", {}).get("colour")}, keys)
            for name, m in runs.items()}


def train_pair(cfg: SynergyConfig, name: str, backbone: Backbone | None = None, **kw: Any) -> Run:
    """:func:`~vfm_lab.jobs.clip.train_clip` of the model ``name`` (``kw``: epochs, ...) into the entry ``name``."""
    return train_clip(cfg, name, make_model=lambda data: build_pair_model(cfg, data, name, backbone), **kw)


def compare_supervision(cfg: SynergyConfig) -> dict[str, Run]:
    """CLIP, SLIP and UniCL on the same pairs, image tower and budget (``cfg.epochs``); each run is an entry of
    ``results.json``."""
    return {name: train_pair(cfg, name) for name in COMPARE}


def supervised_tower(cfg: SynergyConfig, data: ImageSet) -> tuple[Backbone, str]:
    """LiT's image tower: the backbone of chapter 01's cross-entropy run ``ce`` where a finished one with this run's
    data, size, backbone and seed is in the runs folder, else one trained here for ``cfg.tower_epochs`` with
    chapter 01's optimiser settings (into ``out_dir/tower``). Returns it and a line that says which."""
    classifier = Classifier(fresh_backbone(cfg, data), data.num_classes, "ce",
                            augment=supervised_augment(data.image_size))
    loaded, line = weights_from("01_supervised", "ce", cfg, classifier)
    if not loaded:
        train(cfg, classifier, "tower", data, epochs=cfg.tower_epochs, lr=SupervisedConfig.lr,
              weight_decay=SupervisedConfig.weight_decay)
        line += f"; trained here instead: {cfg.tower_epochs} epoch(s) of cross-entropy on the shape classes"
    return classifier.backbone, line


def lit_vs_locked_text(cfg: SynergyConfig, scratch: Run | None = None,
                       tower: Backbone | None = None) -> tuple[dict[str, Run], str]:
    """LiT (a locked supervised image tower, a text tower trained to read it) against a locked pretrained text
    tower (MiniLM, chapter 02's) with an image tower from scratch, and both from scratch (``scratch``: the CLIP
    run, else trained here), at the same budget. ``tower``: LiT's image tower, else :func:`supervised_tower`'s.
    Returns the runs and a line that says where the tower came from."""
    if tower is None:
        tower, line = supervised_tower(cfg, clip_splits(cfg)[0])
    else:
        line = "the locked tower given"
    runs = {"lit": train_pair(cfg, "lit", backbone=tower), "locked-text": train_pair(cfg, "locked-text"),
            "clip": scratch if scratch is not None else train_pair(cfg, "clip")}
    return runs, line


def flip_model(cfg: SynergyConfig, data: ImageSet, patch_drop: float) -> FLIP:
    """CLIP with a fresh ``cfg.vit`` image tower that sees ``1 - patch_drop`` of the patches in training."""
    return FLIP(fresh_backbone(cfg, data, cfg.vit), data.captions, patch_drop=patch_drop,
                augment=clip_augment(data.image_size), **cfg.tower_kwargs())


def flip_throughput(cfg: SynergyConfig, repeats: int = 3) -> dict[float, float]:
    """Training pairs per second at each masking ratio of :data:`FLIP_DROPS`, on one batch of ``cfg.batch_size``
    pairs per process: ``cfg.bench_steps`` steps per ratio, the ratios in turn ``repeats`` times in this process,
    the best of each (what the machine can do, not what its other work left over). Under DDP every rank runs it
    (the loss gathers the batch of every rank) and the pairs of all ranks count."""
    data = clip_splits(cfg)[0].subset(slice(0, cfg.batch_size))
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    batch = {"image": data.images.to(device).float() / 255, "index": torch.arange(len(data), device=device)}
    models = {drop: flip_model(cfg, data, drop).to(device).train() for drop in FLIP_DROPS}
    for model in models.values():  # warm-up: allocator, kernels
        train_steps_per_second(model, batch, 1, dtype, device)
    best = dict.fromkeys(FLIP_DROPS, 0.0)
    for _ in range(repeats):
        for drop, model in models.items():
            steps_per_s = train_steps_per_second(model, batch, cfg.bench_steps, dtype, device)
            best[drop] = max(best[drop], len(data) * D.world_size() * steps_per_s)
    return best


def flip_masking(cfg: SynergyConfig) -> dict[str, Run]:
    """FLIP at each masking ratio of :data:`FLIP_DROPS` for ``cfg.flip_epochs`` (entries ``flip-<percent>``), then,
    for the masked ones, ``cfg.unmask_epochs`` more on every patch (``flip-<percent>-unmasked``, the paper's
    unmasking tuning), each with its zero-shot and retrieval metrics; ``pairs_per_s`` from
    :func:`flip_throughput` in the masked runs' metrics (rank 0)."""
    speed = flip_throughput(cfg)
    runs: dict[str, Run] = {}
    for drop in FLIP_DROPS:
        name = f"flip-{round(100 * drop)}"
        runs[name] = train_clip(cfg, name, epochs=cfg.flip_epochs, make_model=lambda data: flip_model(cfg, data, drop))
        if D.is_main():
            runs[name].metrics["pairs_per_s"] = speed[drop]
            write_results(cfg.out_dir, {name: runs[name].metrics})
        if drop > 0:
            tuned = copy.deepcopy(runs[name].method)
            tuned.patch_drop = 0.0
            runs[f"{name}-unmasked"] = train_clip(cfg, f"{name}-unmasked", epochs=cfg.unmask_epochs,
                                                  make_model=lambda data: tuned)
    return runs


def mim_students(cfg: SynergyConfig, teacher: Backbone) -> dict[str, dict[str, Any]]:
    """A ``cfg.vit`` student regressing ``teacher``'s token features at masked patches (ClipTargetMIM) against MAE
    on pixels, each pre-trained for ``cfg.mim_epochs`` on the training scenes, and a ViT from scratch; each
    backbone probed and fine-tuned on the first ``cfg.finetune_n_train`` labelled scenes (chapter 05's
    :func:`~vfm_lab.jobs.mim.probe_and_finetune`). Entries ``mim-<name>`` of ``results.json``."""
    train_set, test = load_splits(cfg)
    out, results = Path(cfg.out_dir), {}
    teacher = copy.deepcopy(teacher)  # the student's frozen copy: the CLIP model keeps its own
    students = {"scratch": None,
                "clip-target": lambda b: ClipTargetMIM(b, teacher, cfg.mim_mask_ratio, loss=cfg.mim_loss),
                "mae": lambda b: MAE(b)}  # MAE at chapter 05's defaults: 75 % hidden, a narrow two-block decoder
    for name, make in students.items():
        backbone = fresh_backbone(cfg, train_set, cfg.vit)
        metrics: dict[str, Any] = {}
        if make is not None:
            run = train(cfg, make(backbone), f"mim-{name}", train_set, epochs=cfg.mim_epochs)
            metrics = {"pretrain_seconds": run.metrics["train_seconds"], "final_loss": run.metrics["final_loss"]}
        metrics.update(probe_and_finetune(cfg, backbone, train_set, test, out / f"mim-{name}-finetune"))
        if D.is_main():
            results[f"mim-{name}"] = metrics
            write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), f"mim-{name}": metrics})
    return results


def synergy_job(cfg: SynergyConfig) -> dict[str, Any]:
    """``vfm-lab train 06``: the measurements ``cfg.part`` names (``all``: every one), each run an entry of
    ``results.json``; prints each table."""
    parts = ("compare", "lit", "flip", "mim") if cfg.part == "all" else (cfg.part,)
    runs: dict[str, dict[str, Run]] = {}
    if "compare" in parts:
        runs["compare"] = compare_supervision(cfg)
    if "lit" in parts:
        runs["lit"], line = lit_vs_locked_text(cfg, runs.get("compare", {}).get("clip"))
        print(line)
    if "flip" in parts:
        runs["flip"] = flip_masking(cfg)
    out = {part: {name: run.metrics for name, run in part_runs.items()} for part, part_runs in runs.items()}
    if "mim" in parts:
        clip = runs.get("compare", {}).get("clip") or train_pair(cfg, "clip")  # the teacher
        out["mim"] = mim_students(cfg, clip.method.backbone)
    if D.is_main():
        for part, metrics in out.items():
            table = synergy_table(metrics, MIM_KEYS if part == "mim" else SYNERGY_KEYS)
            print(f"{part}, seed {cfg.seed}:\n{format_table(table)}")
    return out
