"""A chapter's ``results.json``: one convention for every chapter, and its headline table.

A run's results are ``{"chapter", "scale", "config", ENTRY: {...}, ...}``: one entry per model the
chapter trains or measures (a method, a baseline such as ``random_init``, a variant of a sweep), each
holding that model's metrics, nested as the library returns them (``{"knn_acc": ..., "probe":
{"shape": ...}, "collapse": {...}}``). :func:`entry_rows` flattens an entry into columns
(``probe/shape``); :func:`headline_table` lays a run out as people read it: one row per entry, the
few columns :data:`HEADLINES` names for the chapter (the rest stay in ``leaderboard.csv``).

>>> results = {"chapter": "03_contrastive", "config": {}, "random_init": {"knn_acc": 0.3, "probe": {"shape": 0.25}},
...            "simclr": {"knn_acc": 0.5, "linear_acc": 0.6, "probe": {"shape": 0.4}, "online_knn": [0.4, 0.5]}}
>>> entry_rows(results)["simclr"]
{'knn_acc': 0.5, 'linear_acc': 0.6, 'probe/shape': 0.4}
>>> print(headline_table(results))
| entry | knn_acc | linear_acc | probe/shape |
|---|---|---|---|
| random_init | 0.3 |  | 0.25 |
| simclr | 0.5 | 0.6 | 0.4 |
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vfm_lab.evaluate import write_results

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"  # the chapters, stored without outputs
RUNS = REPO / "runs"  # where `vfm-lab run` puts its run folders by default (--runs-dir)

HEADLINES: dict[str, tuple[str, ...]] = {
    "00_tour": ("knn_acc", "linear_acc", "train_seconds"),
    "01_supervised": ("test_acc", "knn_acc", "linear_acc", "probe/shape", "probe/colour", "fine_acc", "finetune_acc",
                      "train_seconds"),
    "02_clip": ("t2i_R@1", "retrieval_chance_R@1", "zs_class_acc", "zs_class_chance", "zs_heldout_acc",
                "zs_heldout_chance", "linear_acc", "train_seconds"),
    "03_contrastive": ("knn_acc", "linear_acc", "probe/shape", "probe/colour", "collapse/erank", "collapse/collapsed",
                       "train_seconds"),
    "04_non_contrastive": ("knn_acc", "linear_acc", "probe/shape", "probe/colour", "collapse/erank",
                           "collapse/collapsed", "train_seconds"),
    "05_mim": ("knn_acc", "linear_acc", "linear_acc_mean_patch", "finetune_acc", "mae_loss", "mean_patch_loss",
               "pretrain_seconds"),
    "06_synergy": ("zs_combo_acc", "zs_heldout_acc", "zs_class_acc", "zs_prompt_acc", "t2i_R@1", "linear_acc",
                   "probe/colour", "pairs_per_s", "linear_acc_mean_patch", "finetune_acc", "train_seconds"),
    "07_fusion": ("caption_attr_acc", "caption_attr_acc_frequent", "caption_attr_acc_nearest", "cider", "cider_nearest",
                  "vqa_acc", "vqa_majority_acc", "itm_acc", "itm_contrastive_acc", "t2i_R@1", "train_seconds"),
    "08_region": ("grounding_acc", "grounding_largest", "grounding_centre", "seen_AP50", "heldout_AP50",
                  "heldout_object_AP50", "train_seconds"),
    "09_pixel": ("click1_miou", "click3_miou", "box_miou", "flood_miou", "rectangle_miou", "encoder_per_decoder",
                 "seen_miou", "seen_chance_miou", "heldout_miou", "heldout_background_miou", "heldout_chance_miou",
                 "train_seconds"),
}
NOT_ENTRIES = ("chapter", "scale", "config")


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The numbers and strings of ``values``, nested dicts as ``outer/inner`` columns; lists (curves) left out."""
    out: dict[str, Any] = {}
    for k, v in sorted(values.items()):
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str)):
            out[prefix + k] = v
    return out


def entry_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One flat row per entry of a run's results; top-level numbers, if any, form the row ``""``."""
    top = {k: v for k, v in sorted(results.items()) if k not in NOT_ENTRIES and isinstance(v, (int, float, str))}
    rows = {"": top} if top else {}
    rows.update({k: flat(v) for k, v in results.items() if k not in NOT_ENTRIES and isinstance(v, dict)})
    return rows


def headline_table(results: dict[str, Any], chapter: str | None = None, runs: dict[str, dict] | None = None) -> str:
    """A Markdown table of a run (or of ``runs``: name -> results, for a leaderboard) with one row per
    entry and the chapter's headline columns that some row fills."""
    chapter = chapter or results.get("chapter", "")
    runs = runs if runs is not None else {"": results}
    rows = [(run, entry, row) for run, res in runs.items() for entry, row in entry_rows(res).items()]
    columns = [c for c in HEADLINES.get(chapter, ()) if any(c in row for *_, row in rows)]
    if not columns:  # a chapter without headlines: every column that some row fills
        columns = list(dict.fromkeys(c for *_, row in rows for c in row))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    first = ["run", "entry"] if len(runs) > 1 or "" not in runs else ["entry"]
    lines = ["| " + " | ".join(first + columns) + " |", "|" + "---|" * (len(first) + len(columns))]
    for run, entry, row in rows:
        lead = [run, entry] if len(first) == 2 else [entry]
        lines.append("| " + " | ".join(lead + [fmt(row.get(c, "")) for c in columns]).rstrip() + " |")
    return "\n".join(lines)


def new_results(cfg: Any) -> dict[str, Any]:
    """A chapter's results before any entry: its chapter, scale and whole config."""
    return {"chapter": cfg.CHAPTER, "scale": cfg.scale, "config": cfg.to_dict()}


def grid_runs(cfg: Any, entry: str, *vary: str) -> dict[Any, dict[str, Any]]:
    """``entry`` of each finished ``vfm-lab run`` (a ``DONE`` file) of this chapter whose parameters differ from
    ``cfg``'s only in ``vary``, keyed by the value of that setting (a tuple of values for several) and sorted:
    how a notebook reads back the sweep a grid file ran at full budget (``vfm-lab run NN --grid sweeps/...``).
    It looks beside ``cfg.out_dir`` and in the repository's ``runs/CHAPTER``.
    """
    here = {k: v for k, v in cfg.to_dict().items() if k not in (*vary, "out_dir")}
    found: dict[Any, dict[str, Any]] = {}
    for folder in dict.fromkeys((Path(cfg.out_dir).resolve().parent, RUNS / cfg.CHAPTER)):
        for done in folder.glob("*/DONE"):
            results = json.loads((done.parent / "results.json").read_text())
            config = results.get("config", {})
            if entry in results and all(config.get(k) == v for k, v in here.items()):
                key = tuple(config.get(k) for k in vary)
                found[key[0] if len(vary) == 1 else key] = results[entry]
    return dict(sorted(found.items()))


SAME_DATA = ("scale", "dataset", "image_size", "n_train", "n_test", "backbone", "seed")


def chapter_entry(chapter: str, entry: str, cfg: Any, same: tuple[str, ...] = SAME_DATA) -> dict[str, Any] | None:
    """``entry`` of the newest finished run of another ``chapter`` (a ``results.json``) whose config agrees with
    ``cfg``'s on ``same`` (the data, the backbone, the seed), or None: how chapter 04 draws chapter 03's SimCLR
    next to its own methods. It looks beside ``cfg.out_dir``'s chapter folder and in the repository's
    ``runs/CHAPTER``."""
    here = cfg.to_dict()
    for folder in chapter_runs(chapter, cfg):
        results = json.loads((folder / "results.json").read_text())
        if entry in results and all(results.get("config", {}).get(k) == here.get(k) for k in same):
            return results[entry]
    return None


def chapter_runs(chapter: str, cfg: Any) -> list[Path]:
    """The run folders of ``chapter`` that hold a ``results.json``, newest first: beside ``cfg.out_dir``'s
    chapter folder, then in the repository's ``runs/CHAPTER``."""
    folders = dict.fromkeys((Path(cfg.out_dir).resolve().parent.parent / chapter, RUNS / chapter))
    paths = sorted((p for folder in folders for p in folder.glob("*/results.json")), key=lambda p: p.stat().st_mtime)
    return [p.parent for p in reversed(paths)]


def save_results(out_dir: str | Path, results: dict[str, Any]) -> str:
    """The closing cell of a chapter: write ``results.json`` and return its headline table, then this
    run's headline numbers next to the chapter's reference runs (:mod:`vfm_lab.reference`) where it has them."""
    from vfm_lab import reference  # reference reads the HEADLINES of this module

    path = write_results(out_dir, results)
    ref = reference.load(results.get("chapter", ""))
    against = reference.compare(results, ref) if ref else "(no reference runs of this chapter yet: make reference)"
    return f"{headline_table(results)}\n\n(every number: {path})\n\n{against}"
