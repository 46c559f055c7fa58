"""Command-line training jobs (``vfm-lab train CHAPTER``; under torchrun: DDP).

A job is the chapter's main training run without the narration: load the data the
config names, build the method, train it with the engine, evaluate the backbone, and
write ``results.json``. The notebooks walk through the same steps one cell at a time.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vfm_lab import augment as A
from vfm_lab import distributed as D
from vfm_lab.augment import Augment, weak
from vfm_lab.backbones import Backbone, build_backbone
from vfm_lab.config import (ClipConfig, ContrastiveConfig, MIMConfig, NonContrastiveConfig, SupervisedConfig,
                            TrainConfig)
from vfm_lab.data import ImageSet, batches, load
from vfm_lab.data.icons import ICON_SETS
from vfm_lab.diagnostics import OnlineKNN, collapse_report
from vfm_lab.engine import TrainResult, fit
from vfm_lab.evaluate import accuracy, evaluate_backbone, finetune, retrieval_recall, write_results
from vfm_lab.methods.clip import TEMPLATES, ClipModel, embed_images, embed_texts, zero_shot_accuracy
from vfm_lab.methods.beit import BEiT, PatchTokenizer
from vfm_lab.methods.byol import BYOL
from vfm_lab.methods.dino import DINO
from vfm_lab.methods.mae import MAE, reconstruction_vs_mean_patch
from vfm_lab.methods.maskfeat import MaskFeat
from vfm_lab.methods.moco import MoCoV2, MoCoV3
from vfm_lab.methods.simclr import SimCLR
from vfm_lab.methods.simmim import SimMIM
from vfm_lab.methods.simsiam import SimSiam, simsiam_views
from vfm_lab.methods.supervised import Classifier
from vfm_lab.runtime import seed_everything


def load_splits(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """The train and test sets a config names (``n = 0``: all of a real data set; real
    sets keep their own resolution, ``shapes`` is drawn at ``cfg.image_size``)."""
    kw: dict[str, Any] = {"seed": cfg.seed}
    if cfg.dataset == "shapes":
        kw["image_size"] = cfg.image_size
    return (load(cfg.dataset, "train", n=cfg.n_train or None, **kw),
            load(cfg.dataset, "test", n=cfg.n_test or None, **kw))


def supervised_augment(size: int) -> Augment:
    """Horizontal flips only: the label (the primary shape, a digit's class, a garment) and
    the object's position stay intact. On ``shapes`` at lab scale, crops of 50-100 % cost
    more accuracy (objects cut off) than they bring in a few epochs."""
    return Augment(size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0)


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


@torch.no_grad()
def embed_two_views(method: nn.Module, data: ImageSet, batch_size: int = 256, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``method.embed`` of every image of ``data`` as it is and under a weak augmentation (flip and
    a mild crop): two views (N, K) on the CPU for :func:`vfm_lab.diagnostics.collapse_report`."""
    device = next(method.parameters()).device
    view = weak(data.image_size)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = method.training
    method.eval()
    try:
        pairs = [(method.embed(b["image"]).float().cpu(), method.embed(view(b["image"], generator)).float().cpu())
                 for b in batches(data, batch_size, shuffle=False, drop_last=False, device=device)]
    finally:
        method.train(was_training)
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def pretrain(cfg: TrainConfig, make_method: Callable[[Backbone], nn.Module], name: str
             ) -> tuple[nn.Module, dict[str, float]]:
    """Self-supervised pre-training, then the frozen-backbone evaluation every SSL chapter reports.

    Seeds, builds ``cfg.backbone`` and ``make_method(backbone)``, trains it on the train split into
    ``cfg.out_dir/name`` (a rerun resumes) with online kNN after every epoch, then measures kNN, the
    linear probe and the attribute probes of ``method.backbone`` and the collapse monitor on
    ``method.embed`` of the test images. The metrics go to ``results.json`` under ``name``.
    Returns the trained method and its flat metrics (``{}`` on ranks other than 0).
    """
    seed_everything(cfg.seed)
    train, test = load_splits(cfg)
    method = make_method(build_backbone(cfg.backbone, train.channels, train.image_size))
    result = fit(method, train, out_dir=Path(cfg.out_dir) / name, on_epoch_end=OnlineKNN(method.backbone, train, test),
                 **cfg.train_kwargs())
    if not D.is_main():
        return method, {}
    collapse = collapse_report(*embed_two_views(method, test, seed=cfg.seed))
    knn_curve = [row["knn_acc"] for row in result.history if "knn_acc" in row]
    metrics = {"train_seconds": result.seconds, "final_loss": result.final_loss, "world_size": D.world_size(),
               "online_knn": knn_curve, **evaluate_backbone(method.backbone, train, test),
               **{f"collapse/{k}": v for k, v in collapse.items()}}
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: metrics})
    return method, metrics



# ---- chapter 02: language supervision -----------------------------------------------------
def clip_augment(size: int) -> Augment:
    """Mild crops only: no flips ("left of" must stay left) and no colour jitter (colours are named)."""
    return Augment(size, crop_scale=(0.8, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def shapes_templates(colours: bool = False) -> tuple[str, ...]:
    """Prompt templates in the words of the ``shapes`` captions: every size on every background and,
    with ``colours`` (for a bare shape name, which captions never use without a colour), every colour."""
    from vfm_lab.data.shapes import BACKGROUNDS, COLOURS, SIZES

    words = [f"{size} {colour}" for size in SIZES for colour in COLOURS] if colours else SIZES
    return tuple(f"a {w} {{}} on a {bg} background" for w in words for bg in BACKGROUNDS)


def build_clip(cfg: ClipConfig, train: ImageSet, **overrides: Any) -> ClipModel:
    """A fresh backbone and the ``ClipModel`` the config describes (``overrides``: loss, text_tower, ...)."""
    kw = dict(loss=cfg.loss, text_tower=cfg.text_tower, embed_dim=cfg.embed_dim, context_length=cfg.context_length,
              init_temperature=cfg.init_temperature, local_loss=cfg.local_loss)
    kw.update(overrides)
    return ClipModel(build_backbone(cfg.backbone, train.channels, train.image_size), train.captions,
                     augment=clip_augment(train.image_size), **kw)


def clip_metrics(model: ClipModel, test: ImageSet, heldout: ImageSet | None = None) -> dict[str, float]:
    """Retrieval on the test pairs (image->text and text->image R@1/5/10, chance k / N), zero-shot
    classification of the test images into ``test.classes``, and on ``shapes``, zero-shot
    (colour, shape) on ``heldout``: combinations never seen as the main object in training, among
    all 64 combinations and among the 8 held-out ones. Every accuracy comes with its chance level."""
    img, txt = embed_images(model, test.images), embed_texts(model, test.captions)  # (N, E), (N, E)
    out: dict[str, float] = {}
    for name, (q, g) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        out.update({f"{name}_{k}": v for k, v in retrieval_recall(q, g).items()})
    out["retrieval_chance_R@1"] = 1 / len(test)
    templates = shapes_templates() if test.name == "shapes" else TEMPLATES
    out["zs_class_acc"] = zero_shot_accuracy(model, img, test.labels, test.classes,
                                             shapes_templates(colours=True) if test.name == "shapes" else TEMPLATES)
    out["zs_class_chance"] = 1 / test.num_classes
    held_emb = embed_images(model, heldout.images) if heldout is not None else None  # (M, E)
    if heldout is not None and "colour" not in heldout.attributes:  # held-out categories (the icon sets)
        out["zs_heldout_acc"] = zero_shot_accuracy(model, held_emb, heldout.labels, heldout.classes, templates)
        out["zs_heldout_chance"] = 1 / heldout.num_classes
    if heldout is not None and "colour" in heldout.attributes:
        colours, shapes = heldout.attribute_values["colour"], heldout.attribute_values["shape"]
        combos = [f"{c} {s}" for s in shapes for c in colours]  # class s * len(colours) + c
        y = heldout.attributes["shape"] * len(colours) + heldout.attributes["colour"]
        out["zs_combo_acc"] = zero_shot_accuracy(model, held_emb, y, combos, templates)
        out["zs_combo_chance"] = 1 / len(combos)
        held = sorted(set(y.tolist()))
        remap = torch.full((len(combos),), -1, dtype=torch.long)
        remap[held] = torch.arange(len(held))
        out["zs_heldout_acc"] = zero_shot_accuracy(model, held_emb, remap[y], [combos[i] for i in held],
                                                   templates)
        out["zs_heldout_chance"] = 1 / len(held)
    return out


def clip_splits(cfg: ClipConfig) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    """Train and test image-caption pairs at ``cfg.image_size``, and the zero-shot set: on ``shapes``
    test scenes whose main (shape, colour) never occurs in training, on the icon sets the test images
    of the held-out categories; None for data sets without held-out classes."""
    if cfg.dataset not in ("shapes", *ICON_SETS):
        train, test = load_splits(cfg)
        return train, test, None
    kw = dict(image_size=cfg.image_size, seed=cfg.seed)
    return (load(cfg.dataset, "train", n=cfg.n_train or None, **kw),
            load(cfg.dataset, "test", n=cfg.n_test or None, **kw),
            load(cfg.dataset, "test", n=cfg.n_test or None, holdout=True, **kw))


def train_clip(cfg: ClipConfig, name: str = "clip", epochs: int | None = None, batch_size: int | None = None,
               **overrides: Any) -> tuple[ClipModel, TrainResult, dict[str, float]]:
    """The chapter's main run: CLIP (or the model ``overrides``: loss, text_tower, ...) on the captions
    of ``cfg.dataset`` for ``epochs`` at ``batch_size`` (default: the config's) into ``cfg.out_dir/name``
    (a rerun resumes), then retrieval, zero-shot and the frozen-backbone probes; the metrics go to
    ``results.json`` under ``name``. Returns the model, its training run and its metrics (``{}`` on
    ranks other than 0)."""
    seed_everything(cfg.seed)
    train, test, heldout = clip_splits(cfg)
    model = build_clip(cfg, train, **overrides)
    kw = cfg.train_kwargs()
    kw.update(epochs=epochs or cfg.epochs, batch_size=batch_size or cfg.batch_size)
    result = fit(model, train, out_dir=Path(cfg.out_dir) / name, **kw)
    if not D.is_main():
        return model, result, {}
    metrics = {"train_seconds": result.seconds, "final_loss": result.final_loss, "world_size": D.world_size(),
               "final_temperature": 1 / model.logit_scale.exp().item(), **clip_metrics(model, test, heldout),
               **evaluate_backbone(model.backbone, train, test, attributes=False)}
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: metrics})
    return model, result, metrics


# ---- chapter 05: masked image modeling ----------------------------------------------------
MIM_METHODS = ("mae", "simmim", "maskfeat", "beit")


def build_mim(cfg: MIMConfig, name: str, train: ImageSet) -> nn.Module:
    """Masked image model ``name`` around a fresh ``cfg.backbone``; BEiT's tokenizer is fitted
    on ``train`` (k-means) first."""
    backbone = build_backbone(cfg.backbone, train.channels, train.image_size)
    if name == "mae":
        return MAE(backbone, cfg.mask_ratio, cfg.decoder_dim, cfg.decoder_depth, norm_pix_loss=cfg.norm_pix_loss)
    if name == "simmim":
        return SimMIM(backbone, cfg.mask_token_ratio, cfg.mask_block)
    if name == "maskfeat":
        return MaskFeat(backbone, cfg.mask_token_ratio, cfg.mask_block, bins=cfg.hog_bins)
    if name == "beit":
        tokenizer = PatchTokenizer(cfg.codebook_size, backbone.patch_size, train.channels)
        return BEiT(backbone, tokenizer.fit(train.images.float() / 255, seed=cfg.seed), cfg.mask_token_ratio,
                    cfg.mask_block)
    raise ValueError(f"method={name!r} is not a masked image model; choose one of {', '.join(MIM_METHODS)}")


def probe_and_finetune(cfg: MIMConfig, backbone: Backbone, train: ImageSet, test: ImageSet,
                       out_dir: str | Path | None = None) -> dict[str, float]:
    """The chapter's two readings of a backbone on the first ``cfg.finetune_n_train`` labelled
    training images: frozen (kNN, linear probe) and fine-tuned end to end for ``cfg.finetune_epochs``
    (flips, ``cfg.finetune_lr``); the same budget for a pre-trained and a random backbone."""
    labelled = train.subset(slice(0, cfg.finetune_n_train or len(train)))
    frozen = evaluate_backbone(backbone, labelled, test, attributes=False)
    tuned = finetune(backbone, labelled, test, epochs=cfg.finetune_epochs,
                     batch_size=min(cfg.batch_size, len(labelled)), lr=cfg.finetune_lr,
                     augment=supervised_augment(train.image_size), warmup_epochs=cfg.warmup_epochs,
                     weight_decay=cfg.weight_decay, device=cfg.device, precision=cfg.precision, seed=cfg.seed,
                     out_dir=out_dir, progress=False)
    return {"knn_acc": frozen["knn_acc"], "linear_acc": frozen["linear_acc"], "finetune_acc": tuned["test_acc"],
            "finetune_seconds": tuned["train_seconds"]}


def train_mim(cfg: MIMConfig) -> dict[str, Any]:
    """Pre-train ``cfg.method``, then probe and fine-tune it against a random backbone at the same
    fine-tuning budget (and, for MAE, held-out reconstruction against the mean patch)."""
    seed_everything(cfg.seed)
    train, test = load_splits(cfg)
    method = build_mim(cfg, cfg.method, train)
    result = fit(method, train, out_dir=Path(cfg.out_dir) / cfg.method, **cfg.train_kwargs())
    if not D.is_main():
        return {}
    out = Path(cfg.out_dir)
    metrics = {"train_seconds": result.seconds, "final_loss": result.final_loss, "world_size": D.world_size(),
               **probe_and_finetune(cfg, method.backbone, train, test, out / f"{cfg.method}-finetune")}
    if cfg.method == "mae":
        metrics.update(reconstruction_vs_mean_patch(method, train, test, seed=cfg.seed))
    torch.manual_seed(cfg.seed)
    scratch = build_backbone(cfg.backbone, train.channels, train.image_size)
    results = {cfg.method: metrics, "scratch": probe_and_finetune(cfg, scratch, train, test, out / "scratch-finetune")}
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), **results})
    return results


def tuned_views(aug: Augment, crop_min: float | None, jitter_strength: float) -> Augment:
    """A method's view recipe with crops of ``crop_min``-100 % (None: its own crop range) and its
    colour jitter scaled by ``jitter_strength`` (0: no colour jitter and no greyscale)."""
    s = jitter_strength
    return dataclasses.replace(aug, crop_scale=aug.crop_scale if crop_min is None else (crop_min, 1.0),
                               brightness=aug.brightness * s, contrast=aug.contrast * s,
                               saturation=aug.saturation * s, hue=min(aug.hue * s, 0.5),
                               jitter_p=aug.jitter_p if s > 0 else 0.0, grayscale_p=aug.grayscale_p if s > 0 else 0.0)


def contrastive_views(size: int, crop_min: float, jitter_strength: float) -> Augment:
    """SimCLR's CIFAR recipe (crop, flip, colour distortion of strength s: jitter with p = 0.8 and
    greyscale with p = 0.2; no blur) with crops of ``crop_min``-100 % of the image."""
    return tuned_views(A.simclr(size, blur_p=0.0), crop_min, jitter_strength)


def build_contrastive(cfg: ContrastiveConfig, backbone: Backbone, method: str | None = None,
                      **overrides: Any) -> nn.Module:
    """``cfg.method`` (or ``method``) on ``backbone`` with the config's hyper-parameters and views;
    ``overrides`` replace constructor arguments (``queue_size=...``, ``augment=...``)."""
    method = method or cfg.method
    builders = {"simclr": SimCLR, "moco_v2": MoCoV2, "moco_v3": MoCoV3}
    if method not in builders:
        raise ValueError(f"method={method!r} is not a contrastive method; choose one of {', '.join(builders)}")
    kw: dict[str, Any] = dict(proj_dim=cfg.proj_dim, hidden_dim=cfg.hidden_dim, temperature=cfg.temperature,
                              augment=contrastive_views(backbone.image_size, cfg.crop_min, cfg.jitter_strength))
    if method == "moco_v2":
        kw.update(queue_size=cfg.queue_size, momentum=cfg.momentum)
    if method == "moco_v3":
        kw.update(momentum=cfg.momentum, proj_layers=2)  # 2 layers for a convnet, as the paper's ResNet
    return builders[method](backbone, **{**kw, **overrides})


def train_contrastive(cfg: ContrastiveConfig) -> dict[str, float]:
    """Pre-train ``cfg.method`` with :func:`pretrain` (results under the method's name)."""
    return pretrain(cfg, lambda backbone: build_contrastive(cfg, backbone), cfg.method)[1]


# ---- chapter 04: non-contrastive self-supervision -----------------------------------------
NON_CONTRASTIVE = ("byol", "simsiam", "dino")


def build_non_contrastive(cfg: NonContrastiveConfig, backbone: Backbone, method: str | None = None,
                          **overrides: Any) -> nn.Module:
    """BYOL, SimSiam or DINO (``cfg.method`` or ``method``) on ``backbone`` with the config's
    hyper-parameters and each paper's views, cropped and jittered as the config says;
    ``overrides`` replace constructor arguments (``predictor=False``, ``centering=False``, ...)."""
    method, size = method or cfg.method, backbone.image_size
    views = lambda *augs: tuple(tuned_views(a, cfg.crop_min, cfg.jitter_strength) for a in augs)  # noqa: E731
    if method == "byol":
        kw = dict(proj_dim=cfg.proj_dim, hidden_dim=cfg.hidden_dim, momentum=cfg.momentum,
                  augment=views(A.byol_view1(size), A.byol_view2(size)))
        return BYOL(backbone, **{**kw, **overrides})
    if method == "simsiam":
        kw = dict(proj_dim=cfg.proj_dim, pred_dim=cfg.pred_dim,
                  augment=tuned_views(simsiam_views(size), cfg.crop_min, cfg.jitter_strength))
        return SimSiam(backbone, **{**kw, **overrides})
    if method == "dino":
        convnet = backbone.patch_size is None
        local_size = cfg.local_size if convnet else size  # a timm ViT preset takes one image size
        kw = dict(out_dim=cfg.out_dim, hidden_dim=cfg.hidden_dim, bottleneck_dim=min(256, cfg.hidden_dim),
                  use_bn_in_head=convnet,  # without BN the head of a small convnet drifts to a uniform teacher
                  teacher_temp=cfg.teacher_temp, warmup_teacher_temp=cfg.warmup_teacher_temp,
                  teacher_temp_warmup=cfg.teacher_temp_warmup, student_temp=cfg.student_temp,
                  center_momentum=cfg.center_momentum, momentum=cfg.momentum, n_local=cfg.n_local,
                  local_size=local_size, augment=views(*A.dino_global(size)),
                  local_augment=tuned_views(A.dino_local(local_size), None, cfg.jitter_strength))
        return DINO(backbone, **{**kw, **overrides})
    raise ValueError(f"method={method!r} is not a non-contrastive method; choose one of {', '.join(NON_CONTRASTIVE)}")


def train_non_contrastive(cfg: NonContrastiveConfig) -> dict[str, float]:
    """Pre-train ``cfg.method`` with :func:`pretrain` (results under the method's name)."""
    return pretrain(cfg, lambda backbone: build_non_contrastive(cfg, backbone), cfg.method)[1]


JOBS: dict[str, Callable[[Any], dict[str, float]]] = {"01_supervised": train_supervised,
                                                      "02_clip": lambda cfg: train_clip(cfg)[2],
                                                      "03_contrastive": train_contrastive,
                                                      "04_non_contrastive": train_non_contrastive,
                                                      "05_mim": train_mim}
