"""``vfm-lab``: run chapters in batch, gather a leaderboard, train under torchrun, benchmark.

    vfm-lab run all -p scale=lab                 # every chapter, one results table
    vfm-lab run 01 --grid sweep.yaml             # a papermill sweep over parameters
    vfm-lab leaderboard                          # gather runs/**/results.json again
    torchrun --standalone --nproc_per_node=2 -m vfm_lab train 01 -p scale=smoke
    vfm-lab bench engine                         # engine overhead vs a hand-written loop
    vfm-lab bench ssl                            # SimCLR, BYOL, DINO steps vs lightly
    vfm-lab bench mim                            # MAE vs SimMIM training throughput

Every failure ends in one line on stderr: ``vfm-lab: <what was wrong and what to do>``, exit
status 2 for bad parameters and 1 for the rest (missing or corrupt data, an unusable checkpoint
or output folder, a diverged run, a lost peer; anything unexpected is named by its type).
``--debug`` (or ``VFM_LAB_DEBUG=1``) shows the Python traceback instead.
"""
from __future__ import annotations

import argparse
import ast
import csv
import itertools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from vfm_lab import reference
from vfm_lab.config import CONFIGS, ConfigError
from vfm_lab.distributed import PeerStoppedError, leave_broken_group, leave_group
from vfm_lab.errors import LabError
from vfm_lab.results import NOTEBOOKS, entry_rows, headline_table


def parse_value(text: str) -> Any:
    """``3`` -> 3, ``1e-3`` -> 0.001, ``True`` -> True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"-p {pair!r}: parameters are key=value, for example -p scale=lab")
        key, value = pair.split("=", 1)
        params[key.strip()] = parse_value(value.strip())
    return params


def resolve_chapters(names: list[str]) -> list[str]:
    """``all``, full names (``01_supervised``) or their number (``01``, ``1``)."""
    chapters = sorted(CONFIGS)
    if names == ["all"] or not names:
        return chapters
    out = []
    for name in map(str, names):
        match = [c for c in chapters if c == name or c.split("_")[0] == name.zfill(2)]
        if not match:
            raise ConfigError(f"unknown chapter {name!r}; choose 'all' or one of {', '.join(chapters)}")
        out += [c for c in match if c not in out]
    return out


def expand_grid(path: Path) -> list[dict[str, Any]]:
    """A YAML grid: a mapping of lists (their cartesian product) or a list of mappings.

    In a mapping, a plain value is a one-value list on purpose: ``scale: lab`` with
    ``batch_size: [32, 64]`` is two runs, both at ``lab``. A file that cannot be read or parsed
    (named with the line and column), an empty list (no runs) and any other shape are refused.
    """
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--grid {str(path)!r}: cannot read it ({e.strerror})") from None
    try:
        grid = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"--grid {str(path)!r} is not valid YAML{where}: {why}") from None
    shape = "a grid is a mapping of lists (their product) or a list of mappings (one run each)"
    if isinstance(grid, list) and grid and all(isinstance(g, dict) for g in grid):
        return grid
    if isinstance(grid, dict) and grid:
        values = [v if isinstance(v, list) else [v] for v in grid.values()]
        empty = [k for k, v in zip(grid, values) if not v]
        if empty:
            raise ConfigError(f"--grid {str(path)!r}: {empty[0]!r} is an empty list, which makes no runs; "
                              f"give it at least one value or leave it out")
        return [dict(zip(grid, combo)) for combo in itertools.product(*values)]
    raise ConfigError(f"--grid {str(path)!r} holds {type(grid).__name__} {str(grid)[:60]!r}; {shape}")


def natural_key(path: Path) -> list[Any]:
    """Sort key that reads digit runs as numbers: ``lab-batch_size=32`` before ``lab-batch_size=128``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def run_name(params: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted(params.items()) if k not in ("scale", "out_dir")]
    name = str(params.get("scale", "smoke")) + ("-" + "-".join(parts) if parts else "")
    return "".join(c if c.isalnum() or c in "=-_.," else "_" for c in name)


def plan_runs(chapters: list[str], common: dict[str, Any], grid: list[dict[str, Any]], runs_dir: Path
              ) -> list[tuple[str, dict[str, Any], Path]]:
    """Every (chapter, parameters, run folder), validated before anything runs."""
    plans = []
    for chapter in chapters:
        for extra in grid or [{}]:
            if "chapter" in extra and resolve_chapters([extra["chapter"]]) != [chapter]:
                continue
            params = {**common, **{k: v for k, v in extra.items() if k != "chapter"}}
            if "out_dir" in params:
                raise ConfigError("out_dir is set by the runner (one folder per run under --runs-dir); "
                                  "leave it out of -p and the grid")
            params.setdefault("scale", CONFIGS[chapter].scale_default())
            out = runs_dir / chapter / run_name(params)
            CONFIGS[chapter].from_params(**params, out_dir=str(out))  # refuses bad parameters now
            plans.append((chapter, params, out))
    return plans


def run(args: argparse.Namespace) -> int:
    import papermill as pm

    runs_dir = Path(args.runs_dir).resolve()
    grid = expand_grid(Path(args.grid)) if args.grid else []
    plans = plan_runs(resolve_chapters(args.chapters), parse_params(args.param), grid, runs_dir)
    failed = []
    for i, (chapter, params, out) in enumerate(plans, 1):
        done = out / "DONE"
        if done.exists() and not args.force:
            print(f"[{i}/{len(plans)}] {chapter} {out.name}: done before, skipped (--force reruns)")
            continue
        out.mkdir(parents=True, exist_ok=True)
        expected = reference.expected_seconds(chapter, params["scale"])
        about = f" (about {expected / 60:.1f} min: its reference runs, {reference.machine_of()})" if expected else ""
        print(f"[{i}/{len(plans)}] {chapter} {out.name} -> {out}{about}", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(NOTEBOOKS / f"{chapter}.ipynb", out / f"{chapter}.ipynb",
                                parameters={**params, "out_dir": str(out)}, kernel_name="python3",
                                cwd=str(NOTEBOOKS), progress_bar=not args.quiet)
        except pm.PapermillExecutionError as e:
            print(f"    FAILED in cell {e.exec_count}: {e.ename}: {e.evalue}\n    see {out / f'{chapter}.ipynb'}")
            failed.append(f"{chapter} {out.name}")
            continue
        done.write_text(f"{time.perf_counter() - start:.1f} s\n")
        print(f"    finished in {time.perf_counter() - start:.0f} s")
    table = leaderboard(runs_dir)
    print(table)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}")
        return 1
    return 0


def leaderboard(runs_dir: Path) -> str:
    """Gather every ``results.json`` under ``runs_dir`` into leaderboard.csv and .md.

    Each entry of a run (a method, a baseline, a variant: see :mod:`vfm_lab.results`) is one row, its
    nested metrics flattened into columns (``probe/shape``, ``collapse/erank``); ``config`` and lists
    (curves) stay out. The CSV holds every row and column; the Markdown has one table per chapter
    with its headline columns (:data:`vfm_lab.results.HEADLINES`).
    """
    runs: dict[str, dict[str, dict]] = {}  # chapter -> run folder -> results
    for path in sorted(runs_dir.glob("*/*/results.json"), key=natural_key):  # batch_size=32 before =128
        runs.setdefault(path.parent.parent.name, {})[path.parent.name] = json.loads(path.read_text())
    if not runs:
        return f"no results.json under {runs_dir}"
    rows = [{"chapter": chapter, "run": run, "entry": entry, **row}
            for chapter, chapter_runs in runs.items() for run, results in chapter_runs.items()
            for entry, row in sorted(entry_rows(results).items())]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(runs_dir / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = "\n\n".join(f"## {chapter}\n\n" + headline_table({}, chapter, chapter_runs)
                         for chapter, chapter_runs in runs.items())
    (runs_dir / "leaderboard.md").write_text(table + "\n")
    return f"{table}\n\n(written to {runs_dir / 'leaderboard.csv'} and leaderboard.md)"


def train(args: argparse.Namespace) -> int:
    """Train a chapter's method from the command line (under torchrun: DDP)."""
    from vfm_lab.jobs import JOBS

    chapter = resolve_chapters([args.chapter])[0]
    if chapter not in JOBS:
        raise ConfigError(f"chapter {chapter} has no command-line job; choose one of {', '.join(JOBS)}")
    cfg = CONFIGS[chapter].from_params(**parse_params(args.param))
    results = JOBS[chapter](cfg)
    leave_group()
    print(json.dumps(results, indent=1))
    return 0


def bench(args: argparse.Namespace) -> int:
    from vfm_lab.benchmarks import main as run_benchmarks

    return run_benchmarks(args.what)


def report(error: BaseException) -> int:
    """Print ``error`` as one line on stderr and return the exit status (2: bad parameters)."""
    if isinstance(error, KeyboardInterrupt):
        message, status = "interrupted; run the same command again to resume from the last checkpoint", 130
    elif isinstance(error, LabError):
        message, status = str(error), 2 if isinstance(error, ConfigError) else 1
    elif isinstance(error, OSError) and error.strerror:  # a file or folder of the user's: the OS says which
        message, status = str(error), 1
    else:
        message, status = (f"{type(error).__name__}: {error} (unexpected; rerun with --debug for the "
                           f"traceback and report it)"), 1
    print("vfm-lab: " + " ".join(message.split()), file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    debug = argparse.ArgumentParser(add_help=False)  # --debug before or after the command
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the Python traceback of a failure (also VFM_LAB_DEBUG=1)")
    parser = argparse.ArgumentParser(prog="vfm-lab", description=__doc__, parents=[debug],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", parents=[debug], help="execute chapters with papermill and gather a leaderboard")
    p.add_argument("chapters", nargs="*", default=["all"], help="'all', or chapter names/numbers")
    p.add_argument("-p", "--param", action="append", default=[], help="key=value for every run")
    p.add_argument("--grid", help="YAML grid of parameters: a mapping of lists (their product; a plain value is "
                   "one value) or a list of mappings (one run each)")
    p.add_argument("--runs-dir", default="runs", help="where the run folders go")
    p.add_argument("--force", action="store_true", help="rerun runs that finished before")
    p.add_argument("--quiet", action="store_true", help="no per-cell progress bar")
    p.set_defaults(func=run)
    p = sub.add_parser("leaderboard", parents=[debug], help="gather runs/**/results.json into one table")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=lambda a: print(leaderboard(Path(a.runs_dir).resolve())) or 0)
    p = sub.add_parser("train", parents=[debug],
                       help="train a chapter's method from the command line (torchrun: DDP)")
    p.add_argument("chapter")
    p.add_argument("-p", "--param", action="append", default=[], help="key=value")
    p.set_defaults(func=train)
    p = sub.add_parser("bench", parents=[debug],
                       help="benchmarks: engine overhead, shapes generation speed, SSL against lightly")
    p.add_argument("what", choices=("engine", "shapes", "ssl", "mim", "clip", "methods", "all"))
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        if getattr(args, "debug", False) or os.environ.get("VFM_LAB_DEBUG", "") not in ("", "0"):
            raise
        status = report(e)
        if isinstance(e, PeerStoppedError):  # `vfm-lab train` under torchrun: another rank died
            leave_broken_group(status)
        return status


if __name__ == "__main__":
    sys.exit(main())
