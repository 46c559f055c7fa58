"""Chapter 09's measurements: a promptable segmenter (SAM in miniature) and an open-vocabulary segmenter (LSeg in
miniature), each against its baselines (``vfm-lab train 09``).

- **Prompts** (every object of the test scenes): the mIoU of the mask the model rates best after one click (a
  random pixel of the object), after two and three (each next click from the error region of the last prediction,
  as SAM simulates an annotator), and from the object's box; against a colour flood fill from the first click
  (``skimage.segmentation.flood`` on the colour distance to the clicked pixel, its tolerance the best of a grid on
  training objects) and the box prompt's own rectangle. Per-object IoU from ``torchmetrics``.
- **Cost**: the image encoder's time per image against the decoder's time per prompt.
- **Open vocabulary** (``part=all``): per-pixel labels from text embeddings (chapter 02's CLIP towers), trained on
  the masks of the seen categories; mIoU (``torchmetrics``' Jaccard index per class, the background a class) on the
  seen categories and on the held-out ones, named only by text, against all-background and against chance.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from skimage.segmentation import flood
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.functional.segmentation import mean_iou

from vfm_lab import distributed as D
from vfm_lab.backbones import build_backbone
from vfm_lab.config import PixelConfig
from vfm_lab.data import ImageSet
from vfm_lab.data.shapes import mask_boxes
from vfm_lab.evaluate import write_results
from vfm_lab.jobs.common import Run, fresh_backbone, on_available_data, train
from vfm_lab.jobs.region import RegionData, clip_towers, object_categories, pretrained_lr, region_splits
from vfm_lab.methods.clip import ClipModel, embed_texts
from vfm_lab.methods.lseg import IGNORE, TextSegmenter
from vfm_lab.methods.sam import PromptableSegmenter, error_points, sample_points
from vfm_lab.runtime import best_seconds, eval_mode, resolve_device, seed_everything

CLICKS = 3  # clicks per object in the evaluation
BACKBONES = ("convnet-s", "vit-nano", "vit-tiny")  # the image encoders whose cost encoder_sweep compares
TOLERANCES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)  # the flood fill's colour tolerances tried
TUNING_OBJECTS = 300  # training objects the flood fill's tolerance is chosen on


# ---- objects and their masks ------------------------------------------------------------------------------------------
def scene_objects(data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object of every scene: the index of its scene (M,) and its mask (M, H, W) bool, scene by scene."""
    inst = data.extras["instance_masks"]
    k_max = int(inst.max()) if len(inst) else 0
    present = torch.stack([(inst == k + 1).flatten(1).any(1) for k in range(k_max)], 1)  # (N, K)
    scene, slot = present.nonzero(as_tuple=True)
    return scene, inst[scene] == (slot + 1)[:, None, None]


def object_iou(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted mask (M, H, W) bool with its true mask, from ``torchmetrics`` (1 where both are empty)."""
    iou = mean_iou(predicted[:, None].long(), truth[:, None].long(), num_classes=1, input_format="one-hot")
    return iou.nan_to_num(1.0)


def flood_fill(images: torch.Tensor, points: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The baseline: for each uint8 image (M, 3, H, W) and click (M, 2) (x, y), the pixels connected to the click
    whose colour lies within ``tolerance`` (RGB in [0, 1], Euclidean) of the clicked pixel's, as (M, H, W) bool."""
    rgb = images.permute(0, 2, 3, 1).float().div(255).numpy()
    out = np.zeros(rgb.shape[:3], dtype=bool)
    for m, (x, y) in enumerate(points.long().tolist()):
        distance = np.linalg.norm(rgb[m] - rgb[m, y, x], axis=-1)
        out[m] = flood(distance, (y, x), tolerance=tolerance)
    return torch.from_numpy(out)


def flood_tolerance(data: ImageSet, seed: int = 0) -> float:
    """The tolerance of :data:`TOLERANCES` with the best mIoU on :data:`TUNING_OBJECTS` objects of ``data``."""
    scene, truth = scene_objects(data)
    pick = torch.randperm(len(scene), generator=torch.Generator().manual_seed(seed))[:TUNING_OBJECTS]
    points = sample_points(truth[pick], torch.Generator().manual_seed(seed))
    images = data.images[scene[pick]]
    return max(TOLERANCES, key=lambda t: object_iou(flood_fill(images, points, t), truth[pick]).mean().item())


# ---- the promptable segmenter -----------------------------------------------------------------------------------------
def build_segmenter(cfg: PixelConfig, data: ImageSet) -> PromptableSegmenter:
    """A :class:`PromptableSegmenter` on a fresh ``cfg.backbone``, on ``data``'s instance masks."""
    return PromptableSegmenter(fresh_backbone(cfg, data), data.extras["instance_masks"], **cfg.sam_kwargs())


@torch.no_grad()
def prompt_metrics(model: PromptableSegmenter, data: ImageSet, tolerance: float, seed: int = 0,
                   batch_size: int = 256) -> dict[str, Any]:
    """The mIoU of every object of ``data`` after 1 to :data:`CLICKS` clicks (``click{n}_miou``: each time the mask of
    the 3 with the best predicted IoU, fed back with the next click) and from its true box (``box_miou``), and of the
    two baselines on the same prompts (``flood_miou`` at ``tolerance``, ``rectangle_miou``); each image encoded once.
    The clicks are drawn on the CPU from ``seed``."""
    scene, truth = scene_objects(data)
    g = torch.Generator().manual_seed(seed)
    first = sample_points(truth, g)
    boxes = mask_boxes(truth.to(torch.uint8), 1)[:, 0]  # (M, 4) the true box, as SAM's evaluation gives it
    rows = torch.arange(len(scene))
    device = model.decoder.iou_token.weight.device
    ious: dict[str, list[torch.Tensor]] = {k: [] for k in ("box", *(f"click{c + 1}" for c in range(CLICKS)))}
    with eval_mode(model):
        for lo in range(0, len(scene), batch_size):
            part = rows[lo:lo + batch_size]
            images, index = torch.unique(scene[part], return_inverse=True)
            embeddings = model.encode_image(data.images[images].to(device).float().div(255))[index]  # once per image
            logits, iou = model.decode(embeddings, boxes=boxes[part].to(device))
            ious["box"].append(object_iou(logits[torch.arange(len(part)), iou.argmax(1)].cpu() > 0, truth[part]))
            points, labels, previous = first[part, None].to(device), torch.ones(len(part), 1, device=device), None
            for c in range(CLICKS):
                if c:
                    new_points, new_labels = error_points(previous[:, 0].cpu() > 0, truth[part], g)
                    points = torch.cat([points, new_points[:, None].to(device)], 1)
                    labels = torch.cat([labels, new_labels[:, None].to(device)], 1)
                logits, iou = model.decode(embeddings, points, labels, mask_logits=previous)
                previous = logits[torch.arange(len(part), device=device), iou.argmax(1)][:, None]
                ious[f"click{c + 1}"].append(object_iou(previous[:, 0].cpu() > 0, truth[part]))
    out: dict[str, Any] = {f"{k}_miou": torch.cat(v).mean().item() for k, v in ious.items()}
    rectangle = torch.zeros_like(truth)
    for m, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        rectangle[m, y1:y2, x1:x2] = True
    out.update(flood_miou=object_iou(flood_fill(data.images[scene], first, tolerance), truth).mean().item(),
               rectangle_miou=object_iou(rectangle, truth).mean().item(), flood_tolerance=tolerance,
               objects=len(scene))
    return out


@torch.no_grad()
def decoder_timing(model: PromptableSegmenter, images: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """The image encoder's milliseconds per image and the decoder's per prompt (one point each), on a batch of uint8
    ``images``: the best of ``repeats`` runs of each, in eval mode, on the model's device."""
    device = model.decoder.iou_token.weight.device
    x = images.to(device).float().div(255)
    points = torch.full((len(x), 1, 2), x.shape[-1] / 2, device=device)
    labels = torch.ones(len(x), 1, device=device)
    with eval_mode(model):
        embeddings = model.encode_image(x)
        encoder = 1000 * best_seconds(lambda: model.encode_image(x), device, repeats) / len(x)
        decoder = 1000 * best_seconds(lambda: model.decode(embeddings, points, labels), device, repeats) / len(x)
    return {"encoder_ms_per_image": encoder, "decoder_ms_per_prompt": decoder, "encoder_per_decoder": encoder / decoder}


def encoder_sweep(cfg: PixelConfig, images: torch.Tensor) -> dict[str, dict[str, float]]:
    """:func:`decoder_timing` of an untrained segmenter (the cost does not depend on the weights) on each backbone the
    config allows, at the images' size, with the backbone's parameters in millions: how the encoder's share grows with
    its size, which is SAM's reason for two halves."""
    device = resolve_device(cfg.device)
    masks = torch.zeros(1, *images.shape[-2:], dtype=torch.uint8)
    out = {}
    for backbone in BACKBONES:
        seed_everything(cfg.seed)
        model = PromptableSegmenter(build_backbone(backbone, images.shape[1], images.shape[-1]), masks,
                                    **cfg.sam_kwargs()).to(device)
        out[backbone] = {**decoder_timing(model, images),
                         "encoder_params_m": sum(p.numel() for p in model.backbone.parameters()) / 1e6}
    return out


def train_segmenter(cfg: PixelConfig, data: RegionData, name: str = "sam") -> Run:
    """The promptable segmenter trained on every object of the training scenes into ``cfg.out_dir/name`` (a rerun
    resumes), then :func:`prompt_metrics` on the test scenes, :func:`decoder_timing` and :func:`encoder_sweep`; the
    metrics go to
    ``results.json`` under ``name``."""
    model = build_segmenter(cfg, data.captions)
    run = train(cfg, model, name, data.captions)
    if not D.is_main():
        return Run(model, run.result, {})
    tolerance = flood_tolerance(data.captions, cfg.seed)
    run.metrics.update(**prompt_metrics(model, data.test, tolerance, cfg.seed),
                       **decoder_timing(model, data.test.images[:64]),
                       cost_by_backbone=encoder_sweep(cfg, data.test.images[:64]))
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: run.metrics})
    return run


# ---- open-vocabulary segmentation -------------------------------------------------------------------------------------
def semantic_labels(data: ImageSet, categories: list[str]) -> torch.Tensor:
    """(N, H, W) uint8: 0 background, ``1 + j`` on the pixels of an object of ``categories[j]``, :data:`IGNORE` on
    those of an object of any other category."""
    inst = data.extras["instance_masks"].long()
    cats = object_categories(data)  # (N, K) indices into data.classes
    lookup = torch.tensor([1 + categories.index(c) if c in categories else IGNORE for c in data.classes])
    per_slot = torch.where(cats >= 0, lookup[cats.clamp_min(0)], torch.full_like(cats, IGNORE))  # (N, K)
    per_slot = torch.cat([torch.zeros(len(cats), 1, dtype=torch.long), per_slot], 1)  # slot 0: the background
    return per_slot.gather(1, inst.flatten(1)).view_as(inst).to(torch.uint8)


def build_text_segmenter(cfg: PixelConfig, data: RegionData, towers: ClipModel) -> TextSegmenter:
    """A :class:`TextSegmenter` on ``towers``' image tower and projection, its text tower locked, trained on the
    seen categories' masks of ``data.train``."""
    return TextSegmenter(towers.backbone, functools.partial(embed_texts, towers), data.seen,
                         semantic_labels(data.train, data.seen), image_proj=towers.image_proj, width=cfg.width)


def jaccard(predicted: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """``torchmetrics``' IoU of each class (``classes``,) over all pixels, the :data:`IGNORE` ones left out; NaN for a
    class neither predicted nor present."""
    metric = MulticlassJaccardIndex(classes, average="none", ignore_index=IGNORE, zero_division=float("nan"))
    return metric(predicted.long(), target.long())


@torch.no_grad()
def open_vocab_metrics(model: TextSegmenter, data: RegionData, seed: int = 0) -> dict[str, Any]:
    """For the seen categories (``data.test``) and the held-out ones (``data.heldout_test``), each prompted by its own
    names and the background: the mIoU over the background and the categories (``{group}_miou``), that of labelling
    every pixel background (``{group}_background_miou``) and of a uniformly random label per pixel
    (``{group}_chance_miou``), and the IoU per class (``{group}_class_iou``, the background first, then the names in
    order; NaN for a class neither present nor predicted)."""
    out: dict[str, Any] = {}
    device = model.logit_scale.device
    g = torch.Generator().manual_seed(seed)
    for group, scenes, names in (("seen", data.test, data.seen), ("heldout", data.heldout_test, data.heldout)):
        target = semantic_labels(scenes, names)
        with eval_mode(model):
            predicted = torch.cat([model.segment(scenes.images[i:i + 256].to(device).float().div(255), names).cpu()
                                   for i in range(0, len(scenes), 256)])
        k = 1 + len(names)
        per_class = jaccard(predicted, target, k)
        out[f"{group}_miou"] = per_class.nanmean().item()
        out[f"{group}_background_miou"] = jaccard(torch.zeros_like(target), target, k).nanmean().item()
        out[f"{group}_chance_miou"] = jaccard(torch.randint(0, k, target.shape, generator=g), target, k).nanmean().item()
        out[f"{group}_class_iou"] = per_class.tolist()  # a list: the tables leave it out
    return out


def train_text_segmenter(cfg: PixelConfig, data: RegionData, towers: tuple[ClipModel, str], name: str = "lseg") -> Run:
    """The open-vocabulary segmenter on ``towers`` (what :func:`~vfm_lab.jobs.region.clip_towers` returned) trained on
    the seen categories' masks for ``cfg.seg_epochs`` into ``cfg.out_dir/name``, then :func:`open_vocab_metrics`; the
    metrics go to ``results.json`` under ``name``, with the line that says where the towers came from."""
    clip, line = towers
    seed_everything(cfg.seed)
    model = build_text_segmenter(cfg, data, clip)
    run = train(cfg, model, name, data.train, epochs=cfg.seg_epochs, lr_scale=pretrained_lr(cfg))
    if not D.is_main():
        return Run(model, run.result, {})
    run.metrics.update(towers=line, **open_vocab_metrics(model, data, cfg.seed))
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: run.metrics})
    return run


def pixel_data(cfg: PixelConfig) -> tuple[PixelConfig, RegionData, str]:
    """The config on the data this machine has (the icon scenes, else ``shapes`` with a line that says so), its
    scenes (:func:`~vfm_lab.jobs.region.region_splits`) and the line."""
    cfg, line = on_available_data(cfg, "a colour flood fill segments the flat-coloured shapes almost perfectly, so "
                                       "the segmenter's comparison with it needs the icon scenes")
    return cfg, region_splits(cfg), line


def pixel_job(cfg: PixelConfig) -> dict[str, Any]:
    """``vfm-lab train 09``: the promptable segmenter and its evaluations; with ``part=all`` also the open-vocabulary
    segmenter. Returns the metrics per run."""
    cfg, data, line = pixel_data(cfg)
    print(line)
    runs = {"sam": train_segmenter(cfg, data)}
    if cfg.part == "all":
        runs["lseg"] = train_text_segmenter(cfg, data, clip_towers(cfg, data, cfg.text_tower))
    return {name: run.metrics for name, run in runs.items()}
