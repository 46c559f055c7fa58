"""The course as a website: ``make site`` (``python -m vfm_lab.site RUNS_DIR OUT_DIR``).

One static HTML page per chapter, converted by nbconvert (its ``lab`` template; plots inline as data URIs, so a
page is one file) from the newest finished run of the chapter under ``RUNS_DIR`` (``vfm-lab run`` marks a finished
run with ``DONE``: ``make run`` writes ``runs/``, ``make reference`` ``runs/reference/``). A chapter without a
finished run gets the page of its stored notebook, without outputs, under a line that says how to fill it. An
index page lists every chapter with what it teaches (:data:`vfm_lab.reference.CHAPTERS`) and the run it shows,
for readers who want the course without running it.
"""
from __future__ import annotations

import argparse
import html
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from vfm_lab.reference import CHAPTERS
from vfm_lab.results import NOTEBOOKS

NOT_RUN = "not run yet: make run (or vfm-lab run {chapter}), then make site"


def finished_run(runs_dir: Path, chapter: str) -> Path | None:
    """The executed notebook of ``chapter``'s newest finished run under ``runs_dir`` (None: no finished run)."""
    runs = [d for d in (runs_dir / chapter).glob("*") if (d / "DONE").exists() and (d / f"{chapter}.ipynb").exists()]
    return max(runs, key=lambda d: (d / "DONE").stat().st_mtime) / f"{chapter}.ipynb" if runs else None


def chapter_page(notebook: Path, banner: str) -> str:
    """The HTML page of ``notebook`` with ``banner`` (where it comes from) and a link back to the index on top."""
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(notebook, as_version=4))
    top = (f'<p class="vfm-banner" style="font-family:sans-serif;margin:1em 2em">'
           f'<a href="index.html">vfm_lab: all chapters</a> &middot; '
           f'{html.escape(banner)}</p>')
    end = body.index(">", body.index("<body")) + 1
    return body[:end] + top + body[end:]


def build_site(runs_dir: str | Path, out_dir: str | Path) -> dict[str, str]:
    """Write ``out_dir/index.html`` and one ``out_dir/NN_name.html`` per chapter; returns, per chapter, where its
    page came from (the run's folder, or :data:`NOT_RUN`)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources: dict[str, str] = {}
    rows = []
    for chapter, (survey, what) in CHAPTERS.items():
        run = finished_run(runs_dir, chapter)
        sources[chapter] = str(run.parent) if run else NOT_RUN.format(chapter=chapter)
        banner = f"outputs of the run {run.parent.name} ({run.parent})" if run else sources[chapter]
        (out_dir / f"{chapter}.html").write_text(chapter_page(run or NOTEBOOKS / f"{chapter}.ipynb", banner))
        rows.append(f'<tr><td><a href="{chapter}.html">{chapter}</a></td><td>{survey}</td><td>{html.escape(what)}</td>'
                    f'<td>{html.escape(run.parent.name if run else "not run yet")}</td></tr>')
    (out_dir / "index.html").write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfm_lab</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:.3em .6em;"
        "vertical-align:top}</style></head><body><h1>vfm_lab: how vision foundation models are pre-trained</h1>"
        f"<p>Every chapter with the outputs of a run from <code>{html.escape(str(runs_dir))}</code>.</p>"
        "<table><tr><th>chapter</th><th>survey</th><th>what the backbone learns from</th><th>run</th></tr>"
        + "".join(rows) + "</table></body></html>")
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="where vfm-lab run wrote its runs (runs, or runs/reference)")
    parser.add_argument("out_dir", help="where the pages go")
    args = parser.parse_args(argv)
    for chapter, source in build_site(args.runs_dir, args.out_dir).items():
        print(f"{chapter}: {source}")
    print(f"open {Path(args.out_dir).resolve() / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
