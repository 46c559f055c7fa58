"""Chapter 02's job: language supervision (CLIP, SigLIP, a locked MiniLM text tower), the same-budget comparison,
the icon sets."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from vfm_lab import distributed as D
from vfm_lab.augment import Augment
from vfm_lab.backbones import build_backbone
from vfm_lab.config import ClipConfig, TwoTowerConfig
from vfm_lab.data import DataMissingError, ImageSet, load
from vfm_lab.data.icons import ICON_SETS
from vfm_lab.evaluate import evaluate_backbone, retrieval_recall, write_results
from vfm_lab.jobs.common import Run, train
from vfm_lab.methods.clip import TEMPLATES, ClipModel, embed_images, embed_texts, zero_shot_accuracy
from vfm_lab.methods.unicl import PROMPT
from vfm_lab.runtime import seed_everything


def clip_augment(size: int) -> Augment:
    """Mild crops only: no flips ("left of" must stay left) and no colour jitter (colours are named)."""
    return Augment(size, crop_scale=(0.8, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def shapes_templates(colours: bool = False) -> tuple[str, ...]:
    """Prompt templates in the words of the ``shapes`` captions: every size on every background and,
    with ``colours`` (for a bare shape name, which captions never use without a colour), every colour."""
    from vfm_lab.data.shapes import BACKGROUNDS, COLOURS, SIZES

    words = [f"{size} {colour}" for size in SIZES for colour in COLOURS] if colours else SIZES
    return tuple(f"a {w} {{}} on a {bg} background" for w in words for bg in BACKGROUNDS)


def build_clip(cfg: TwoTowerConfig, train: ImageSet, **overrides: Any) -> ClipModel:
    """A fresh backbone and the ``ClipModel`` the config describes (``overrides``: loss, text_tower, ...)."""
    return ClipModel(build_backbone(cfg.backbone, train.channels, train.image_size), train.captions,
                     augment=clip_augment(train.image_size), **{**cfg.tower_kwargs(), **overrides})


def clip_metrics(model: ClipModel, test: ImageSet, heldout: ImageSet | None = None) -> dict[str, float]:
    """Retrieval on the test pairs (image->text and text->image R@1/5/10, chance k / N), zero-shot
    classification of the test images into ``test.classes`` (on ``shapes`` also from the bare prompt
    "a photo of a {class}.", ``zs_prompt_acc``), and on ``shapes``, zero-shot (colour, shape) on ``heldout``: combinations never seen as the main object in training, among
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
    if test.name == "shapes":  # the bare class prompt, which shapes captions never use and UniCL trains on
        out["zs_prompt_acc"] = zero_shot_accuracy(model, img, test.labels, test.classes, [PROMPT])
        out["zs_prompt_chance"] = 1 / test.num_classes
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


def clip_splits(cfg: TwoTowerConfig) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Train and test image-caption pairs at ``cfg.image_size``, and the zero-shot set: on ``shapes``
    test scenes whose main (shape, colour) never occurs in training, on the icon sets the test images
    of the held-out categories."""
    kw = dict(image_size=cfg.image_size, seed=cfg.seed)
    return (load(cfg.dataset, "train", n=cfg.n_train or None, **kw),
            load(cfg.dataset, "test", n=cfg.n_test or None, **kw),
            load(cfg.dataset, "test", n=cfg.n_test or None, holdout=True, **kw))


def train_clip(cfg: TwoTowerConfig, name: str = "clip", epochs: int | None = None, batch_size: int | None = None,
               n_train: int | None = None, make_model: Callable[[ImageSet], ClipModel] | None = None,
               **overrides: Any) -> Run:
    """The chapter's main run: CLIP (or the model ``overrides``: loss, text_tower, ...; or the two-tower model
    ``make_model`` builds for the training pairs: chapter 06's) on the captions of ``cfg.dataset`` (the first
    ``n_train`` pairs, default all) for ``epochs`` at ``batch_size`` (default: the config's) into
    ``cfg.out_dir/name`` (a rerun resumes), then retrieval, zero-shot and the frozen-backbone probes (on
    ``shapes``, one per attribute too); the metrics go to ``results.json`` under ``name``. Returns the
    :class:`~vfm_lab.jobs.common.Run` (its metrics ``{}`` on ranks other than 0)."""
    train_set, test, heldout = clip_splits(cfg)
    train_set = train_set.subset(slice(0, n_train)) if n_train else train_set
    seed_everything(cfg.seed)
    model = make_model(train_set) if make_model is not None else build_clip(cfg, train_set, **overrides)
    run = train(cfg, model, name, train_set, epochs=epochs or cfg.epochs, batch_size=batch_size or cfg.batch_size)
    if not D.is_main():
        return Run(model, run.result, {})
    run.metrics.update(final_temperature=1 / model.logit_scale.exp().item(), **clip_metrics(model, test, heldout),
                       **evaluate_backbone(model.backbone, train_set, test))
    if cfg.dataset in ICON_SETS:  # a model that has read names of things: does it transfer to garments?
        try:
            run.metrics.update(fashion_zero_shot(model, n=cfg.fmnist_n_test or None, seed=cfg.seed))
        except DataMissingError as e:
            warnings.warn(f"Fashion-MNIST zero-shot skipped: {e}")
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: run.metrics})
    return run


def fashion_zero_shot(model: ClipModel, n: int | None = None, invert: bool = True, root: str | None = None,
                      seed: int = 0) -> dict[str, float]:
    """Zero-shot Fashion-MNIST (``n`` test images, default all 10,000) from its 10 class names alone,
    lower-cased ("t-shirt or top", "ankle boot", ...) in every prompt of ``TEMPLATES``, ensembled.

    The grey 28 px garments become RGB at the image tower's size and, with ``invert``, dark on white
    like the icons the model was trained on (Fashion-MNIST draws them light on black). Chance is 1/10.
    Raises :class:`DataMissingError` (with the fetch command) when Fashion-MNIST is not on this machine.
    """
    data = load("fashion-mnist", "test", n=n, image_size=model.backbone.image_size, seed=seed, root=root)
    images = data.images.expand(-1, model.backbone.in_chans, -1, -1)  # (N, 1, H, W) -> (N, C, H, W)
    images = 255 - images if invert else images
    names = [c.lower().replace("/", " or ") for c in data.classes]
    acc = zero_shot_accuracy(model, embed_images(model, images), data.labels, names, TEMPLATES)
    return {"fmnist_zs_acc": acc, "fmnist_zs_chance": 1 / data.num_classes}


CLIP_VARIANTS = {"clip": dict(loss="clip"), "siglip": dict(loss="siglip"),
                 "clip-minilm": dict(loss="clip", text_tower="minilm-locked")}  # the same-budget comparison
TABLE_KEYS = ("t2i_R@1", "i2t_R@1", "retrieval_chance_R@1", "zs_class_acc", "zs_class_chance", "zs_combo_acc",
              "zs_combo_chance", "zs_heldout_acc", "zs_heldout_chance", "fmnist_zs_acc", "fmnist_zs_chance",
              "linear_acc", "train_seconds")
ICON_BATCH = 64  # the icon sets hold 1,234-2,636 training pairs: smaller batches, more steps


def table_row(metrics: dict[str, float], keys: tuple[str, ...] = TABLE_KEYS) -> dict[str, float]:
    """The columns ``keys`` (default: this chapter's comparison tables') that ``metrics`` has."""
    return {k: metrics[k] for k in keys if k in metrics}


def compare_clip(cfg: ClipConfig) -> dict[str, dict[str, float]]:
    """CLIP vs SigLIP vs CLIP with the locked MiniLM text tower at the same budget:
    ``cfg.compare_epochs`` at ``cfg.batch_size`` on ``cfg.dataset``, each run into its own
    ``results.json`` entry ``compare-<name>``. Returns one table row per variant."""
    return {name: table_row(train_clip(cfg, f"compare-{name}", epochs=cfg.compare_epochs, **kw).metrics)
            for name, kw in CLIP_VARIANTS.items()}


def icon_sets(cfg: ClipConfig) -> tuple[str, ...]:
    """The icon sets ``cfg.icon_dataset`` names (``all``: the three, ``none``: none)."""
    return {"all": ICON_SETS, "none": ()}.get(cfg.icon_dataset, (cfg.icon_dataset,))


def train_icons(cfg: ClipConfig, dataset: str) -> dict[str, dict[str, float]]:
    """CLIP on the icon set ``dataset`` with a text tower from scratch against the locked MiniLM, for
    ``cfg.icon_epochs`` at batch ``ICON_BATCH`` on ``cfg.icon_n_train`` pairs (0: all): zero-shot on
    the held-out categories and on Fashion-MNIST, each with its chance level. Entries ``icons-<set>-<tower>``
    of ``results.json``; returns rows ``<set>/<tower>``. Raises :class:`DataMissingError` without the set."""
    icon_cfg = ClipConfig.from_params(**{**cfg.to_dict(), "dataset": dataset, "n_train": cfg.icon_n_train,
                                         "n_test": 0, "epochs": cfg.icon_epochs, "batch_size": ICON_BATCH})
    rows = {f"{dataset}/{tower}": table_row(train_clip(icon_cfg, f"icons-{dataset}-{tower}", text_tower=tower).metrics)
            for tower in ("scratch-s", "minilm-locked")}
    if D.is_main():
        write_results(cfg.out_dir, {"config": cfg.to_dict()})  # the icon runs wrote theirs
    return rows


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table with one column per row name and one line per metric any row has."""
    metrics = list(dict.fromkeys(k for row in rows.values() for k in row))
    width = [max(len(name), 9) + 2 for name in rows]
    lines = [" " * 22 + "".join(f"{name:>{w}}" for name, w in zip(rows, width))]
    lines += [f"{m:>22}" + "".join(f"{row[m]:>{w}.4g}" if m in row else " " * w
                                   for row, w in zip(rows.values(), width)) for m in metrics]
    return "\n".join(lines)


def clip_job(cfg: ClipConfig) -> dict[str, Any]:
    """``vfm-lab train 02``: the main run (:func:`train_clip`), CLIP vs SigLIP vs the locked MiniLM at the same budget
    (:func:`compare_clip`), and on each icon set ``cfg.icon_dataset`` names, a text tower from scratch
    against the locked MiniLM (:func:`train_icons`; a set not on this machine is skipped with a warning).
    Prints the tables; every run is an entry of ``results.json``."""
    out: dict[str, Any] = {"clip": train_clip(cfg).metrics, "compare": compare_clip(cfg), "icons": {}}
    for dataset in icon_sets(cfg):
        try:
            out["icons"].update(train_icons(cfg, dataset))
        except DataMissingError as e:
            warnings.warn(f"icon set {dataset} skipped: {e}")
    if D.is_main():
        write_results(cfg.out_dir, {"config": cfg.to_dict()})
        print(f"CLIP vs SigLIP vs locked MiniLM, {cfg.compare_epochs} epochs at batch {cfg.batch_size} on "
              f"{cfg.dataset}:\n" + format_table(out["compare"]))
        for dataset in icon_sets(cfg):
            rows = {name: row for name, row in out["icons"].items() if name.startswith(f"{dataset}/")}
            if rows:
                print(f"{dataset}, text tower from scratch vs locked MiniLM, {cfg.icon_epochs} epochs at batch "
                      f"{ICON_BATCH}:\n" + format_table(rows))
    return out
