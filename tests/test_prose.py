"""The notebooks' prose states no results: a number a run produced is printed by the run, next to its verdict,
never typed into a markdown cell where the next run would contradict it (issue 19)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
# a decimal, a percentage, a speed-up or a count of points: how measured results read
RESULT = re.compile(r"(?<![\w.:/])(?:\d+(?:\.\d+)?\s?%|\d+(?:\.\d+)?x\b|\d+(?:\.\d+)? points?\b|\d+\.\d+)")
# what may carry such numbers: code spans (a parameter's value), a citation's section, equation or table
CITATION = re.compile(r"(?:section|sec\.|eq\.|table|fig\.|appendix)\s?$", re.IGNORECASE)


def result_numbers(markdown: str) -> list[str]:
    text = re.sub(r"`[^`]*`", "", markdown)  # code spans name parameters and their values
    return [m.group() for m in RESULT.finditer(text) if not CITATION.search(text[max(0, m.start() - 12):m.start()])]


def test_result_numbers_are_found_and_parameters_and_citations_are_not():
    assert result_numbers("CLIP scores 0.34, SigLIP 18 %, twice as fast (1.4x), up 12 points") == \
        ["0.34", "18 %", "1.4x", "12 points"]
    assert result_numbers("`mask_ratio = 0.75` (MAE sec. 4.1, table 2.3, arXiv:2309.10020), 32 px, 8 x 8 patches") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_markdown_cell_states_a_result(path):
    cells = nbformat.read(path, as_version=4).cells
    found = {i: result_numbers(c.source) for i, c in enumerate(cells) if c.cell_type == "markdown"}
    assert not {i: n for i, n in found.items() if n}, "print these from the run instead (cell index: numbers)"
