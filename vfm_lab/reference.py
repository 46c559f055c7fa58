"""Reference numbers: what each chapter measures at ``lab`` on seeds 0 and 1, and how long it takes.

``make reference`` runs every chapter at ``lab`` once per seed (``sweeps/reference_seeds.yaml``) and then
``python -m vfm_lab.reference RUNS_DIR``, which writes ``notebooks/reference/NN.json`` from those runs: per
entry of the chapter's ``results.json``, each headline column (:data:`vfm_lab.results.HEADLINES`) as one value
per seed, and the chapter's wall time per seed with the machine it ran on. Nothing here is typed by hand:

- a notebook's closing cell shows "this run" next to the reference (:func:`compare`, through
  :func:`vfm_lab.results.save_results`);
- ``vfm-lab run`` prints each chapter's expected time before it starts (:func:`expected_seconds`);
- the README's chapter table is generated from the files (:func:`readme_table`, ``make reference``).

>>> ref = {"chapter": "00_tour", "seeds": [0, 1], "seconds": [50.0, 60.0],
...        "entries": {"trained": {"knn_acc": [0.5, 0.7]}}}
>>> print(compare({"scale": "smoke", "trained": {"knn_acc": 0.4}}, ref))
| entry | metric | this run (smoke) | reference (lab, seeds 0-1) |
|---|---|---|---|
| trained | knn_acc | 0.4 | 0.6 (0.5-0.7) |
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
from pathlib import Path
from statistics import mean
from typing import Any

from vfm_lab.results import HEADLINES, REPO, entry_rows

FOLDER = REPO / "notebooks" / "reference"
README = REPO / "README.md"
SCALE = "lab"
TABLE_BEGIN, TABLE_END = "<!-- reference table: make reference -->", "<!-- end of reference table -->"
# What each chapter trains, for the README's table (the numbers come from the reference files).
CHAPTERS = {
    "00_tour": ("2.1", "the data, the engine, evaluations, papermill"),
    "01_supervised": ("2.2", "labels: cross-entropy, CosFace (MOFI), sampled softmax, transfer"),
    "02_clip": ("2.3", "captions: CLIP, SigLIP, a locked MiniLM text tower, zero-shot, retrieval, batch scaling, "
                "icons"),
    "03_contrastive": ("2.4", "two views: SimCLR, MoCo v2/v3 on Fashion-MNIST against labels; what each keeps of "
                       "a scene; collapse monitor, batch and queue sweeps, augmentations"),
    "04_non_contrastive": ("2.4", "BYOL, SimSiam, DINO on Fashion-MNIST against labels and SimCLR; what each keeps; "
                           "collapse ablations, DINO attention maps"),
    "05_mim": ("2.4", "masked patches: MAE, SimMIM, MaskFeat (HOG), BEiT (visual tokens) on Fashion-MNIST; "
                      "probes and fine-tuning with a tenth of the labels"),
    "06_synergy": ("2.5", "supervision combined: UniCL, SLIP, LiT against a locked text tower, FLIP's masking ratios, "
                          "masked modeling with CLIP targets against MAE"),
    "07_fusion": ("2.6", "fusion: a CoCa that captions (greedy, beam), answers questions and matches with ALBEF's "
                         "hard negatives, each against its trivial baseline; icon scenes"),
    "08_region": ("2.6", "regions: a GLIP-style grounder on chapter 02's CLIP towers, phrase grounding, COCO AP on seen "
                         "and held-out shapes, CLIP's text tower against a locked MiniLM"),
    "09_pixel": ("2.6", "pixels: a SAM-style promptable segmenter against a flood fill and the box, clicks, the cost of "
                        "each half; LSeg-style open-vocabulary segmentation on held-out icon categories"),
}
# The one number per chapter the README's table shows: (entry, column, baseline entry or None[, baseline column:
# default the same column]).
README_HEADLINE = {
    "00_tour": ("trained", "knn_acc", "random_init"),
    "01_supervised": ("ce", "test_acc", None),
    "02_clip": ("clip", "zs_class_acc", None),
    "03_contrastive": ("simclr", "linear_acc", "random_init"),
    "04_non_contrastive": ("byol", "linear_acc", "random_init"),
    "05_mim": ("mae", "finetune_acc", "scratch"),
    "06_synergy": ("mim-clip-target", "linear_acc", "mim-mae"),
    "07_fusion": ("coca", "vqa_acc", "coca", "vqa_majority_acc"),
    "08_region": ("glip", "grounding_acc", "glip", "grounding_largest"),
    "09_pixel": ("sam", "click1_miou", "sam", "flood_miou"),
}


def machine() -> str:
    """This machine in a line: CPU model, cores, and the PyTorch that ran."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def build(runs_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Reference files from finished runs ``runs_dir/CHAPTER/lab-seed=N/`` (a ``DONE`` file holds the seconds)."""
    refs: dict[str, dict[str, Any]] = {}
    for done in sorted(Path(runs_dir).glob(f"*/{SCALE}-seed=*/DONE")):
        chapter, seed = done.parent.parent.name, int(done.parent.name.split("=")[1])
        results = json.loads((done.parent / "results.json").read_text())
        ref = refs.setdefault(chapter, {"chapter": chapter, "scale": SCALE, "seeds": [], "seconds": [],
                                        "machine": machine(), "command": "make reference", "entries": {}})
        ref["seeds"].append(seed)
        ref["seconds"].append(round(float(done.read_text().split()[0]), 1))
        for entry, row in entry_rows(results).items():
            for column in HEADLINES.get(chapter, ()):
                if isinstance(row.get(column), (int, float)):
                    ref["entries"].setdefault(entry, {}).setdefault(column, []).append(round(row[column], 4))
    return refs


def write(refs: dict[str, dict[str, Any]], folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder or FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for chapter, ref in refs.items():
        path = folder / f"{chapter[:2]}.json"
        path.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def load(chapter: str, folder: str | Path | None = None) -> dict[str, Any] | None:
    """The reference file of ``chapter`` (``None`` if there is none yet)."""
    path = Path(folder or FOLDER) / f"{chapter[:2]}.json"
    return json.loads(path.read_text()) if path.exists() else None


def expected_seconds(chapter: str, scale: str) -> float | None:
    """The mean wall time of ``chapter`` at ``scale`` in its reference runs (only ``lab`` has them)."""
    ref = load(chapter) if scale == SCALE else None
    return mean(ref["seconds"]) if ref and ref["seconds"] else None


def spread(values: list[float]) -> str:
    """``mean (min-max)`` of the seeds' values, or the one value."""
    fmt = lambda v: f"{v:.4g}"
    return fmt(values[0]) if len(values) == 1 else f"{fmt(mean(values))} ({fmt(min(values))}-{fmt(max(values))})"


def seeds_label(ref: dict[str, Any]) -> str:
    seeds = sorted(ref["seeds"])
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def compare(results: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """A table of this run's headline numbers next to the reference's, entry by entry (rows the
    reference has); empty without a reference."""
    if not ref:
        return ""
    rows = entry_rows(results)
    lines = [f"| entry | metric | this run ({results.get('scale', '?')}) | reference ({SCALE}, {seeds_label(ref)}) |",
             "|---|---|---|---|"]
    for entry, columns in ref["entries"].items():
        for column, values in columns.items():
            mine = rows.get(entry, {}).get(column)
            mine = f"{mine:.4g}" if isinstance(mine, (int, float)) else ""
            lines.append(f"| {entry} | {column} | {mine} | {spread(values)} |")
    return "\n".join(lines)


def readme_table(folder: str | Path | None = None) -> str:
    """The README's chapter table: what each chapter trains, its headline at ``lab`` and its wall time."""
    lines = ["| notebook | survey | what the backbone learns from | headline at `lab` (seeds 0-1: mean, min-max) "
             "| `lab` time |", "|---|---|---|---|---|"]
    total, measured = 0.0, 0
    for chapter, (survey, what) in CHAPTERS.items():
        ref, (entry, column, baseline, *base_column) = load(chapter, folder), README_HEADLINE[chapter]
        base_column = base_column[0] if base_column else column
        headline = seconds = "not measured yet"
        if ref:
            values = ref["entries"].get(entry, {}).get(column)
            base = ref["entries"].get(baseline, {}).get(base_column) if baseline else None
            headline = f"{entry} {column} {spread(values)}" if values else "missing"
            headline += f" vs {baseline}{'' if base_column == column else ' ' + base_column} {spread(base)}" if base else ""
            headline += "" if len(ref["seeds"]) > 1 else f" (seed {ref['seeds'][0]} only)"
            total, measured = total + mean(ref["seconds"]), measured + 1
            seconds = f"{mean(ref['seconds']) / 60:.1f} min"
        lines.append(f"| `{chapter}` | {survey} | {what} | {headline} | {seconds} |")
    which = "all chapters" if measured == len(CHAPTERS) else f"the {measured} of {len(CHAPTERS)} chapters measured"
    lines.append(f"\n`make run` at `lab`, {which}: {total / 60:.0f} minutes on {machine_of(folder)}, one chapter "
                 f"after another (set-up and data come on top).")
    return "\n".join(lines)


def machine_of(folder: str | Path | None = None) -> str:
    machines = {load(c, folder)["machine"] for c in CHAPTERS if load(c, folder)}
    return "; ".join(sorted(machines)) or "no machine yet"


def update_readme(path: str | Path = README, folder: str | Path | None = None) -> None:
    """Replace the table between the README's reference markers with :func:`readme_table`."""
    path = Path(path)
    text = path.read_text()
    pattern = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {TABLE_BEGIN} ... {TABLE_END} block for the chapter table")
    path.write_text(pattern.sub(lambda _: f"{TABLE_BEGIN}\n{readme_table(folder)}\n{TABLE_END}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vfm_lab.reference", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir",
                        help="the runs of `vfm-lab run all -p scale=lab --grid sweeps/reference_seeds.yaml`")
    parser.add_argument("--folder", default=None, help=f"where the reference files go (default {FOLDER})")
    parser.add_argument("--readme", default=str(README), help="the README whose chapter table is rewritten")
    args = parser.parse_args(argv)
    refs = build(args.runs_dir)
    if not refs:
        raise SystemExit(f"no finished {SCALE}-seed=N runs under {args.runs_dir}; run `make reference`")
    for path in write(refs, args.folder):
        print(f"wrote {path}")
    update_readme(args.readme, args.folder)
    print(f"updated the chapter table of {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
