"""Chapter 08's measurements: a GLIP-style grounder on chapter 02's CLIP towers, then phrase grounding and
COCO-style detection on seen and on held-out categories, each against its baseline (``vfm-lab train 08``).

- Grounding accuracy: the top box for each object's phrase ("small red star") at IoU >= 0.5, against the
  largest true box of the image and a centre box of the training boxes' median size, whatever the phrase says.
- AP, AP50 and AR@100 from ``pycocotools`` on the seen categories (prompted by their names), and on the
  categories held out of every training box, named only by text, against the same model prompted with the
  class-agnostic "object" (its boxes offered as every held-out category).
- With ``part=all``: the same grounder on the other text encoder (chapter 02's CLIP text tower against the
  locked MiniLM with chapter 02's projection), each with the image tower of its own CLIP run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from vfm_lab import distributed as D
from vfm_lab.config import ClipConfig, RegionConfig
from vfm_lab.data import ImageSet, load
from vfm_lab.evaluate import write_results
from vfm_lab.jobs.clip import build_clip
from vfm_lab.jobs.common import Run, train, weights_from
from vfm_lab.methods.clip import ClipModel, embed_texts
from vfm_lab.methods.glip import Grounder, flip_boxes
from vfm_lab.runtime import eval_mode, seed_everything

HELDOUT_SHAPES = ("heart", "ring")  # the shapes no training box is labelled with: named only by text at test time
OBJECT_PROMPT = "object"  # the class-agnostic prompt every object answers to in training (the baseline's prompt)
TOWER_ENTRIES = {"scratch-s": "compare-clip", "scratch-b": "compare-clip", "minilm-locked": "compare-clip-minilm"}


@dataclasses.dataclass
class RegionData:
    """The scenes of a run: ``captions`` (every training scene: the towers' pairs), ``train`` (the scenes whose
    objects are all of ``seen`` categories: the grounder's boxes), ``test`` (seen categories' boxes) and
    ``heldout_test`` (boxes of the ``heldout`` categories; on ``shapes`` the same scenes as ``test``)."""
    captions: ImageSet
    train: ImageSet
    test: ImageSet
    heldout_test: ImageSet
    seen: list[str]
    heldout: list[str]


def object_categories(data: ImageSet) -> torch.Tensor:
    """(N, K) the category of each object as an index into ``data.classes``, -1 where there is none."""
    return data.extras["object_categories"] if "object_categories" in data.extras else data.extras["object_shapes"]


def region_splits(cfg: RegionConfig) -> RegionData:
    """The scenes a config names: on ``shapes`` the training scenes without a :data:`HELDOUT_SHAPES` object
    (drawn from three times ``n_train``); on the icon scenes the icon set's own held-out categories."""
    kw: dict[str, Any] = dict(image_size=cfg.image_size, seed=cfg.seed, max_objects=cfg.max_objects)
    if cfg.dataset == "icon-scenes":
        kw["source"] = cfg.icon_set
        captions, test = load(cfg.dataset, "train", n=cfg.n_train, **kw), load(cfg.dataset, "test", n=cfg.n_test, **kw)
        heldout_test = load(cfg.dataset, "test", n=cfg.n_test, holdout=True, **kw)
        return RegionData(captions, captions, test, heldout_test, list(test.classes), list(heldout_test.classes))
    pool = load(cfg.dataset, "train", n=3 * cfg.n_train, **kw)
    held = torch.tensor([pool.classes.index(c) for c in HELDOUT_SHAPES])
    clean = (~torch.isin(object_categories(pool), held)).all(1).nonzero()[:, 0][:cfg.n_train]
    test = load(cfg.dataset, "test", n=cfg.n_test, **kw)
    seen = [c for c in pool.classes if c not in HELDOUT_SHAPES]
    return RegionData(pool.subset(slice(0, cfg.n_train)), pool.subset(clean), test, test, seen, list(HELDOUT_SHAPES))


def objects(data: ImageSet, categories: Sequence[str]) -> list[list[tuple[int, str, str]]]:
    """Per scene, its objects of ``categories``: (slot k, category name, phrase)."""
    cats = object_categories(data)
    return [[(k, data.classes[c], data.extras["phrases"][i][k]) for k, c in enumerate(cats[i].tolist())
             if c >= 0 and data.classes[c] in categories] for i in range(len(data))]


def grounder_texts(data: ImageSet, categories: Sequence[str]) -> tuple[list[list[list[str]]], torch.Tensor]:
    """What the grounder trains on: per scene, per object, the texts that name it (its phrase, its category,
    :data:`OBJECT_PROMPT`), and the boxes (N, K, 4) in the same order."""
    per_scene = objects(data, categories)
    k = max(1, max(len(o) for o in per_scene))
    boxes = torch.zeros(len(data), k, 4)
    for i, objs in enumerate(per_scene):
        for j, (slot, _, _) in enumerate(objs):
            boxes[i, j] = data.extras["boxes"][i, slot]
    return [[[phrase, cat, OBJECT_PROMPT] for _, cat, phrase in objs] for objs in per_scene], boxes


def clip_towers(cfg: RegionConfig, data: RegionData, text_tower: str) -> tuple[ClipModel, str]:
    """Both towers of a CLIP with ``text_tower``: chapter 02's same-budget run of it (:data:`TOWER_ENTRIES`) where
    a finished one on this data, size, backbone and seed exists, else one trained here for ``cfg.tower_epochs`` on
    every training scene's caption (into ``out_dir/tower-<text_tower>``). Returns it and a line that says which."""
    tower_cfg = dataclasses.replace(cfg, text_tower=text_tower)
    seed_everything(cfg.seed)
    model = build_clip(tower_cfg, data.captions)
    same = ("dataset", "image_size", "backbone", "seed", "embed_dim", "context_length")
    loaded, line = weights_from("02_clip", TOWER_ENTRIES[text_tower], tower_cfg, model,
                                same=same + (("text_tower",) if text_tower != "minilm-locked" else ()))
    if not loaded:
        train(tower_cfg, model, f"tower-{text_tower}", data.captions, epochs=cfg.tower_epochs, lr=ClipConfig.lr,
              weight_decay=ClipConfig.weight_decay)
        line += f"; trained here instead: {cfg.tower_epochs} epoch(s) of CLIP on the {len(data.captions)} captions"
    return model, line


def build_grounder(cfg: RegionConfig, data: RegionData, towers: ClipModel) -> Grounder:
    """A :class:`Grounder` on ``towers``' image tower and projection, its text tower locked."""
    texts, boxes = grounder_texts(data.train, data.seen)
    return Grounder(towers.backbone, functools.partial(embed_texts, towers), texts, boxes,
                    image_proj=towers.image_proj, augment=flip_boxes, **cfg.model_kwargs())


def pretrained_lr(cfg: RegionConfig):
    """The learning-rate factor of each parameter: ``cfg.backbone_lr_scale`` on the pretrained image tower and its
    projection, 1 on the new heads."""
    return lambda name: cfg.backbone_lr_scale if name.startswith(("backbone.", "image_proj.")) else 1.0


# ---- evaluation ---------------------------------------------------------------------------
@torch.no_grad()
def detect_all(model: Grounder, images: torch.Tensor, prompts: Sequence[str], **kw: Any) -> list[dict[str, torch.Tensor]]:
    """:meth:`Grounder.detect` over uint8 images in batches, in eval mode, on the CPU."""
    device = model.logit_scale.device
    with eval_mode(model):
        return [{k: v.cpu() for k, v in d.items()} for i in range(0, len(images), 256)
                for d in model.detect(images[i:i + 256].to(device).float().div(255), prompts, **kw)]


@torch.no_grad()
def grounding_accuracy(model: Grounder, data: ImageSet, categories: Sequence[str]) -> dict[str, float]:
    """The share of objects (of ``categories``) whose phrase's top box overlaps a true box of that phrase at IoU >= 0.5
    (``grounding_acc``), and the same for the largest true box of the image (``grounding_largest``) and a centre box
    of the median true size (``grounding_centre``)."""
    rows = [(i, k, phrase) for i, objs in enumerate(objects(data, categories)) for k, _, phrase in objs]
    if not rows:
        raise ValueError(f"{data.name} has no object of {list(categories)} to ground")
    index = torch.tensor([i for i, _, _ in rows])
    device = model.logit_scale.device
    with eval_mode(model):
        found = torch.cat([model.ground(data.images[index[j:j + 256]].to(device).float().div(255),
                                        [p for _, _, p in rows[j:j + 256]])[0].cpu() for j in range(0, len(rows), 256)])
    boxes = data.extras["boxes"].float()  # (N, K, 4)
    same = torch.tensor([[p == q for q in data.extras["phrases"][i]] + [False] * (boxes.shape[1] - len(data.extras["phrases"][i]))
                         for i, _, p in rows])  # (R, K) the slots whose phrase is the query's
    area = (boxes[..., 2:] - boxes[..., :2]).prod(-1)  # (N, K), 0 where absent
    largest = boxes[index, area[index].argmax(1)]
    wh = (boxes[..., 2:] - boxes[..., :2])[area > 0].median(0).values
    side = data.image_size
    centre = torch.cat([(side - wh) / 2, (side + wh) / 2])[None].expand(len(rows), 4)

    def hit(pred: torch.Tensor) -> float:
        iou = torch.stack([box_iou(pred[r:r + 1], boxes[i])[0] for r, i in enumerate(index.tolist())])  # (R, K)
        return ((iou >= 0.5) & same).any(1).float().mean().item()

    return {"grounding_acc": hit(found), "grounding_largest": hit(largest), "grounding_centre": hit(centre),
            "grounding_objects": len(rows)}


def coco_json(data: ImageSet, categories: Sequence[str], detections: Sequence[dict[str, torch.Tensor]] | None = None,
              labels: Sequence[int] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """The COCO JSON of ``data``'s boxes of ``categories`` (``detections`` None: the ground truth, a dict), or of
    ``detections`` (a list of results; ``labels`` maps each detection label to an index into ``categories``,
    default the label itself). Category ids are 1 + the index into ``categories``; boxes are [x, y, w, h]."""
    if detections is None:
        anns = []
        for i, objs in enumerate(objects(data, categories)):
            for k, cat, _ in objs:
                x1, y1, x2, y2 = data.extras["boxes"][i, k].tolist()
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": categories.index(cat) + 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        return {"images": [{"id": i, "width": data.image_size, "height": data.image_size} for i in range(len(data))],
                "annotations": anns, "categories": [{"id": j + 1, "name": c} for j, c in enumerate(categories)]}
    out = []
    for i, d in enumerate(detections):
        for (x1, y1, x2, y2), s, lab in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            out.append({"image_id": i, "category_id": (labels[lab] if labels is not None else lab) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    return out


def coco_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """``pycocotools``' bounding-box evaluation: AP (IoU 0.5:0.95), AP50 and AR@100 (0 without detections)."""
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AR100": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        ev = COCOeval(truth, truth.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": max(0.0, float(ev.stats[0])), "AP50": max(0.0, float(ev.stats[1])), "AR100": max(0.0, float(ev.stats[8]))}


def detection_metrics(model: Grounder, data: RegionData, out_dir: str | Path | None = None) -> dict[str, float]:
    """COCO AP / AP50 / AR@100 on the seen categories prompted by their names (``seen_*``), on the held-out ones
    prompted by theirs (``heldout_*``), and on the held-out ones from the "object" prompt's boxes, each offered as
    every held-out category (``heldout_object_*``). With ``out_dir``, the JSON files go to ``out_dir/coco``."""
    out: dict[str, float] = {}
    cases = {"seen": (data.test, data.seen), "heldout": (data.heldout_test, data.heldout)}
    files: dict[str, Any] = {}
    for name, (scenes, cats) in cases.items():
        gt = coco_json(scenes, cats)
        dets = coco_json(scenes, cats, detect_all(model, scenes.images, cats))
        files.update({f"{name}_gt": gt, f"{name}_dt": dets})
        out.update({f"{name}_{k}": v for k, v in coco_ap(gt, dets).items()})
    agnostic = detect_all(model, data.heldout_test.images, [OBJECT_PROMPT])
    gt = files["heldout_gt"]
    dets = [r for j in range(len(data.heldout)) for r in coco_json(data.heldout_test, data.heldout, agnostic, [j])]
    files["heldout_object_dt"] = dets
    out.update({f"heldout_object_{k}": v for k, v in coco_ap(gt, dets).items()})
    if out_dir is not None:
        folder = Path(out_dir) / "coco"
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (folder / f"{name}.json").write_text(json.dumps(content))
    return out


def train_grounder(cfg: RegionConfig, name: str = "glip", text_tower: str | None = None,
                   data: RegionData | None = None, towers: tuple[ClipModel, str] | None = None) -> Run:
    """The grounder on ``text_tower``'s CLIP (default ``cfg.text_tower``; ``towers``: what :func:`clip_towers` returned
    for it, else it is called here), trained on the boxes of the seen categories into ``cfg.out_dir/name`` (a rerun
    resumes), then grounding and detection; the metrics go to ``results.json`` under ``name``, with the line that says
    where the towers came from (``towers``)."""
    data = data if data is not None else region_splits(cfg)
    text_tower = text_tower or cfg.text_tower
    towers, line = towers if towers is not None else clip_towers(cfg, data, text_tower)
    seed_everything(cfg.seed)
    model = build_grounder(cfg, data, towers)
    run = train(cfg, model, name, data.train, lr_scale=pretrained_lr(cfg))
    if not D.is_main():
        return Run(model, run.result, {})
    run.metrics.update(text_tower=text_tower, towers=line, **grounding_accuracy(model, data.test, data.seen),
                       **detection_metrics(model, data, Path(cfg.out_dir) / name))
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: run.metrics})
    return run


def other_tower(text_tower: str) -> str:
    """The text encoder the comparison sets against ``text_tower``: MiniLM against a CLIP text tower, and back."""
    return "scratch-s" if text_tower == "minilm-locked" else "minilm-locked"


def region_job(cfg: RegionConfig) -> dict[str, Any]:
    """``vfm-lab train 08``: the grounder and its evaluations; with ``part=all`` also the same grounder on the other
    text encoder (entry ``glip-<tower>``). Returns the metrics per run."""
    data = region_splits(cfg)
    runs = {"glip": train_grounder(cfg, data=data)}
    if cfg.part == "all":
        other = other_tower(cfg.text_tower)
        runs[f"glip-{other}"] = train_grounder(cfg, f"glip-{other}", other, data)
    return {name: run.metrics for name, run in runs.items()}
