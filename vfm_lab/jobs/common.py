"""What the chapters' jobs share: the data a config names, the supervised views, the one way to train a
method on a config (:func:`train`, which returns a :class:`Run`), and self-supervised pre-training with the
frozen-backbone evaluation every SSL chapter reports (:func:`pretrain`)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vfm_lab import distributed as D
from vfm_lab.augment import Augment, weak
from vfm_lab.backbones import Backbone, build_backbone
from vfm_lab.config import TrainConfig
from vfm_lab.data import DataMissingError, ImageSet, batches, load
from vfm_lab.diagnostics import OnlineKNN, collapse_report
from vfm_lab.engine import CHECKPOINT, Method, TrainResult, fit, load_checkpoint
from vfm_lab.evaluate import evaluate_backbone, write_results
from vfm_lab.results import chapter_runs
from vfm_lab.runtime import eval_mode, resolve_device, seed_everything


def load_splits(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """The train and test sets a config names (``n = 0``: all of a real data set), at ``cfg.image_size``
    pixels a side: ``shapes`` is drawn at that size, a real set is resized to it, as notebook 01 does."""
    kw: dict[str, Any] = {"seed": cfg.seed, "image_size": cfg.image_size}
    return (load(cfg.dataset, "train", n=cfg.n_train or None, **kw),
            load(cfg.dataset, "test", n=cfg.n_test or None, **kw))


def on_available_data(cfg: TrainConfig, why: str = "the headline (each method against the random backbone on real "
                      "images) needs it; on shapes it measures the shape class, which the scenes' colours crowd out"
                      ) -> tuple[TrainConfig, str]:
    """``cfg`` and a line that names its data set; where ``cfg.dataset`` is the chapter's default real set
    and this machine lacks it, ``cfg`` on ``shapes`` instead and a line that says so and ``why`` it matters
    (chapters 03 to 05 measure their headline on Fashion-MNIST, chapter 09 on the icon scenes, and fall back
    rather than stop). A set the user chose is not replaced: its loader says what is missing."""
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == "dataset")
    if cfg.dataset == "shapes" or cfg.dataset != default:
        return cfg, f"data: {cfg.dataset}"
    kw = {"source": cfg.icon_set} if cfg.dataset == "icon-scenes" else {}
    try:
        load(cfg.dataset, "test", n=2, seed=cfg.seed, image_size=cfg.image_size, **kw)
    except DataMissingError as e:
        return dataclasses.replace(cfg, dataset="shapes"), f"data: shapes, because {e} -- {cfg.dataset}: {why}"
    return cfg, f"data: {cfg.dataset}"


def shapes_half(cfg: Any) -> Any:
    """The config of the part of a chapter that trains on ``shapes`` (03's and 04's second half, 05's
    pictures): ``cfg.shapes_n_train`` scenes (0: ``cfg.n_train``) for ``cfg.shapes_epochs``, into
    ``out_dir/shapes``.

    >>> from vfm_lab.config import NonContrastiveConfig
    >>> half = shapes_half(NonContrastiveConfig.from_params(scale="lab", out_dir="runs/04"))
    >>> half.dataset, half.n_train, half.epochs, half.out_dir
    ('shapes', 2000, 1, 'runs/04/shapes')
    """
    return dataclasses.replace(cfg, dataset="shapes", n_train=cfg.shapes_n_train or cfg.n_train,
                               epochs=cfg.shapes_epochs, out_dir=f"{cfg.out_dir}/shapes")


def supervised_augment(size: int) -> Augment:
    """Horizontal flips only: the label (the primary shape, a digit's class, a garment) and
    the object's position stay intact. On ``shapes`` at lab scale, crops of 50-100 % cost
    more accuracy (objects cut off) than they bring in a few epochs."""
    return Augment(size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0)


@torch.no_grad()
def embed_two_views(method: Method, data: ImageSet, batch_size: int = 256, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``method.embed`` of every image of ``data`` as it is and under a weak augmentation (flip and
    a mild crop): two views (N, K) on the CPU for :func:`vfm_lab.diagnostics.collapse_report`."""
    device = next(method.parameters()).device
    view = weak(data.image_size)
    generator = torch.Generator(device=device).manual_seed(seed)
    with eval_mode(method):
        pairs = [(method.embed(b["image"]).float().cpu(), method.embed(view(b["image"], generator)).float().cpu())
                 for b in batches(data, batch_size, shuffle=False, drop_last=False, device=device)]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def random_init_baseline(cfg: TrainConfig) -> dict[str, Any]:
    """The frozen-feature evaluation of ``cfg.backbone`` at initialisation, drawn as :func:`pretrain` draws it:
    the baseline every self-supervised number is read against. Written to ``results.json`` as
    ``random_init`` (rank 0; ``{}`` on the others), so the leaderboard shows it next to the methods."""
    train, test = load_splits(cfg)
    backbone = fresh_backbone(cfg, train).to(resolve_device(cfg.device))
    if not D.is_main():
        return {}
    metrics = evaluate_backbone(backbone, train, test)
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), "random_init": metrics})
    return metrics


@dataclass
class Run:
    """What a training call gives back: the trained method, the engine's result (``history``: one row
    per logged step and one per epoch's online kNN; steps, seconds) and the metrics, nested as
    ``results.json`` holds them (``metrics["probe"]["shape"]``, ``metrics["collapse"]["erank"]``)."""
    method: Method
    result: TrainResult
    metrics: dict[str, Any]

    @property
    def history(self) -> list[dict[str, float]]:
        return self.result.history


def fresh_backbone(cfg: TrainConfig, data: ImageSet, name: str | None = None) -> Backbone:
    """``cfg.backbone`` (or ``name``) for ``data``'s channels and size, initialised from ``cfg.seed``:
    every run of a chapter starts from the same weights."""
    seed_everything(cfg.seed)
    return build_backbone(name or cfg.backbone, data.channels, data.image_size)


SAME_TRAINING = ("dataset", "image_size", "n_train", "backbone", "seed")  # what a model trained elsewhere must share


def weights_from(chapter: str, name: str, cfg: TrainConfig, method: Method,
                 same: tuple[str, ...] = SAME_TRAINING) -> tuple[bool, str]:
    """Load into ``method`` the weights of the run ``name`` that another ``chapter`` finished (its entry
    ``name`` is in that run's ``results.json``, its checkpoint in ``name/``), from the newest such run
    whose config agrees with ``cfg``'s on ``same``: how chapter 06 locks chapter 01's image tower.
    A run trained with other settings is refused, and the line says which and why. Returns whether
    weights were loaded and a line that says what happened, for the notebook to print."""
    here, refused = cfg.to_dict(), []
    for folder in chapter_runs(chapter, cfg):
        path = folder / name / CHECKPOINT
        results = json.loads((folder / "results.json").read_text())
        if name not in results or not path.exists():
            continue
        differ = [f"{k}={results['config'].get(k)!r}" for k in same if results["config"].get(k) != here.get(k)]
        if differ:
            refused.append(f"{path} ({', '.join(differ)}; this run: "
                           f"{', '.join(f'{k}={here.get(k)!r}' for k in same)})")
            continue
        state = load_checkpoint(path, method)
        return True, f"{name}: the weights of {path} (chapter {chapter}, {state['step']} steps)"
    line = f"{name}: no finished run of {chapter} with this run's {', '.join(same)}"
    return False, line + "".join(f"; refused {r}" for r in refused)


def train(cfg: TrainConfig, method: Method, name: str, data: ImageSet | None = None, **overrides: Any) -> Run:
    """The one way a chapter trains: ``method`` on ``data`` (default: the config's train split) with the
    config's settings, into ``cfg.out_dir/name`` (a rerun resumes; ``/`` in ``name`` makes subfolders).
    ``overrides`` replace any of ``cfg.train_kwargs()`` or set fit's other arguments (``epochs=``,
    ``min_lr=``, ``on_epoch_end=``, ``progress=``). Returns the :class:`Run`: the method, the engine's
    result with the whole history, and ``metrics`` ``train_seconds``, ``final_loss``, ``steps`` and
    ``world_size``, to which the chapter's evaluations add theirs."""
    data = data if data is not None else load_splits(cfg)[0]
    result = fit(method, data, out_dir=Path(cfg.out_dir) / name, **{**cfg.train_kwargs(), **overrides})
    return Run(method, result, {"train_seconds": result.seconds, "final_loss": result.final_loss,
                                "steps": result.steps, "world_size": D.world_size()})


def pretrain(cfg: TrainConfig, make_method: Callable[[Backbone], Method], name: str) -> Run:
    """Self-supervised pre-training, then the frozen-backbone evaluation every SSL chapter reports.

    Seeds, builds ``cfg.backbone`` and ``make_method(backbone)``, trains it on the train split into
    ``cfg.out_dir/name`` (a rerun resumes) with online kNN after every epoch, then measures kNN, the
    linear probe and the attribute probes of ``method.backbone`` and the collapse monitor on
    ``method.embed`` of the test images. The metrics go to ``results.json`` under ``name``; the
    :class:`Run` holds them (``{}`` on ranks other than 0), the method and its history.
    """
    train_set, test = load_splits(cfg)
    method = make_method(fresh_backbone(cfg, train_set))
    run = train(cfg, method, name, train_set, on_epoch_end=OnlineKNN(method.backbone, train_set, test))
    if not D.is_main():
        return Run(method, run.result, {})
    run.metrics.update(online_knn=[row["knn_acc"] for row in run.history if "knn_acc" in row],
                       **evaluate_backbone(method.backbone, train_set, test),
                       collapse=collapse_report(*embed_two_views(method, test, seed=cfg.seed)))
    write_results(cfg.out_dir, {"chapter": cfg.CHAPTER, "config": cfg.to_dict(), name: run.metrics})
    return run
