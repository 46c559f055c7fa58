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

from pathlib import Path
from typing import Any

from vfm_lab.evaluate import write_results

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
    "05_mim": ("knn_acc", "linear_acc", "finetune_acc", "mae_loss", "mean_patch_loss", "pretrain_seconds"),
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


def save_results(out_dir: str | Path, results: dict[str, Any]) -> str:
    """The closing cell of a chapter: write ``results.json`` and return its headline table."""
    path = write_results(out_dir, results)
    return f"{headline_table(results)}\n\n(every number: {path})"
