"""The chapters' exercises: the check their cells call, and the student notebooks.

A chapter's exercises are its last section, from the ``## Exercises`` heading on, and run on
their own: the section's first code cell imports what they use. Each exercise is a markdown
cell (the task and a hint), a *solution* cell whose answer lies between ``### BEGIN SOLUTION``
and ``### END SOLUTION``, and a *check* cell that compares the answer with the library or with
a run ("predict, then run"). The cells carry nbgrader's metadata (``solution`` and ``grade``),
so nbgrader itself can release and grade them. ``python -m vfm_lab.exercises OUT`` (``make
student``) writes the student notebooks with nbgrader's own preprocessors: ``ClearSolutions``
puts ``raise NotImplementedError()`` in place of each solution, ``ClearOutput`` empties the cells.

>>> check("two plus two", 4.0, 4.0)
✓ two plus two: correct
>>> check("two plus two", 5.0, 4.0)
Traceback (most recent call last):
...
AssertionError: ✗ two plus two: expected 4.0, got 5.0 (hint: none)
>>> check("the sharper target", "0.04", "0.04", hint="the lower temperature")
✓ the sharper target: correct
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import nbformat
import torch

HEADING = "## Exercises"


def check(name: str, yours: Any, reference: Any, *, atol: float = 1e-5, rtol: float = 1e-4,
          hint: str = "none") -> None:
    """Compare your answer with the library's or the run's (numbers, arrays or tensors within
    tolerance; words exactly, ignoring case); print a tick, or raise with what was expected and a hint."""
    if isinstance(reference, str):
        if str(yours).strip().lower() != reference.strip().lower():
            raise AssertionError(f"✗ {name}: expected {reference!r}, got {yours!r} (hint: {hint})")
        print(f"✓ {name}: correct")
        return
    a = torch.as_tensor(yours, dtype=torch.float64)
    b = torch.as_tensor(reference, dtype=torch.float64)
    if a.shape != b.shape:
        raise AssertionError(f"✗ {name}: expected shape {tuple(b.shape)}, got {tuple(a.shape)} (hint: {hint})")
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        show = lambda t: t.item() if t.numel() == 1 else f"{t.flatten()[:4].tolist()}..."
        raise AssertionError(f"✗ {name}: expected {show(b)}, got {show(a)} (hint: {hint})")
    print(f"✓ {name}: correct")


def exercise_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The cells of the notebook's exercise section: from the ``## Exercises`` heading to the end."""
    starts = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith(HEADING)]
    if not starts:
        raise ValueError(f"the notebook has no markdown cell starting with {HEADING!r}")
    return nb.cells[starts[0]:]


def role(cell: nbformat.NotebookNode) -> str:
    """``solution``, ``check`` (nbgrader's grade cells) or ``other``."""
    meta = cell.metadata.get("nbgrader", {})
    return "solution" if meta.get("solution") else "check" if meta.get("grade") else "other"


def run_exercises(nb: nbformat.NotebookNode) -> list[tuple[nbformat.NotebookNode, BaseException | None]]:
    """Run the code cells of the exercise section in order in one fresh namespace, as a kernel
    would, and return each cell with the exception it raised (None: it ran)."""
    scope: dict[str, Any] = {"__name__": "__exercises__"}
    out = []
    for i, cell in enumerate(c for c in exercise_cells(nb) if c.cell_type == "code"):
        try:
            exec(compile(cell.source, f"<exercise cell {i}>", "exec"), scope)
            out.append((cell, None))
        except Exception as e:  # a stub's NotImplementedError, a failed check
            out.append((cell, e))
    return out


def student_version(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as students get it: nbgrader's ``ClearSolutions`` (each solution becomes
    ``raise NotImplementedError()``; a solution region outside a solution cell is an error) and
    ``ClearOutput``."""
    from nbgrader.preprocessors import ClearOutput, ClearSolutions  # the test extra; only the writer needs it

    nb = copy.deepcopy(nb)
    for preprocessor in (ClearSolutions(enforce_metadata=True), ClearOutput()):
        nb, _ = preprocessor.preprocess(nb, {})
    return nb


def main(argv: list[str] | None = None) -> int:
    """``python -m vfm_lab.exercises OUT [NOTEBOOK ...]``: write the student notebooks to OUT."""
    parser = argparse.ArgumentParser(prog="python -m vfm_lab.exercises", description=main.__doc__)
    parser.add_argument("out", type=Path, help="folder for the student notebooks")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(Path("notebooks").glob("*.ipynb"))
    if not paths:
        parser.error("no notebooks given and none in notebooks/")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = student_version(nbformat.read(path, as_version=4))
        stubs = sum(role(c) == "solution" for c in nb.cells)
        nbformat.write(nb, args.out / path.name)
        print(f"{args.out / path.name}: {stubs} solution(s) replaced by a stub")
    return 0


if __name__ == "__main__":
    sys.exit(main())
