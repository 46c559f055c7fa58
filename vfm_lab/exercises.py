"""The chapters' checks: a method's key lines against its library class, the exercises, the student notebooks.

:func:`check_against_library` runs one training step of a library method and of a notebook cell's
lines for it, from the same state and seed, and checks that they agree.

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
from typing import Any, Callable

import nbformat
import torch

from vfm_lab.engine import Method

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


def check_against_library(name: str, method: Method, batch: dict[str, torch.Tensor],
                          forward: Callable[[Method, dict], torch.Tensor],
                          after_step: Callable[[Method], None] | None = None, *, seed: int = 0,
                          lr: float = 0.1, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """The notebook's lines of a method against its library class: one training step on ``batch``,
    twice from the same state and seed. The library's step is ``method(batch)["loss"]``, backward,
    plain SGD with ``lr``, then ``method.after_step``; the notebook's is
    ``forward(method, batch)``, the same backward and SGD, then ``after_step(method)`` (None: the
    library's). Checks the same loss, the same gradient of every parameter and the same state
    afterwards (weights, EMA copies, a queue, a center, BatchNorm statistics); prints what matched
    or raises with the first difference. ``atol`` is relative to each tensor's largest magnitude (above 1): the
    two passes add the same float32 terms in another order. The method is left as it was."""
    start = copy.deepcopy(method.state_dict())

    def step(loss_of: Callable[[], torch.Tensor], update: Callable[[], None]):
        method.load_state_dict(start)
        method.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the same views, masks and crops
        loss = loss_of()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        with torch.no_grad():
            for p in method.parameters():
                if p.grad is not None:
                    p.sub_(lr * p.grad)
        update()
        return loss.detach(), grads, {k: v.clone() for k, v in method.state_dict().items()}

    library_update = lambda: method.after_step(0, 10)
    try:
        ref = step(lambda: method(batch)["loss"], library_update)
        mine = step(lambda: forward(method, batch), (lambda: after_step(method)) if after_step else library_update)
    finally:
        method.load_state_dict(start)
        method.zero_grad(set_to_none=True)
    def close(a: torch.Tensor, b: torch.Tensor) -> bool:  # atol scales with the tensor: float32 sums over a batch
        scale = max(1.0, b.double().abs().max().item()) if b.numel() else 1.0  # differ by their order of terms
        return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol * scale, rtol=rtol)

    if not close(mine[0], ref[0]):
        raise AssertionError(f"✗ {name}: the cell's loss is {mine[0].item():.6f}, {type(method).__name__}'s "
                             f"{ref[0].item():.6f}")
    for what, a, b in (("gradient", mine[1], ref[1]), ("state after the step", mine[2], ref[2])):
        if a.keys() != b.keys():
            raise AssertionError(f"✗ {name}: the {what} covers {sorted(a.keys() ^ b.keys())[:3]} in one run only")
        bad = [k for k in a if not close(a[k], b[k])]
        if bad:
            raise AssertionError(f"✗ {name}: the {what} differs from {type(method).__name__}'s in {bad[:3]}")
    print(f"✓ {name}: the same loss ({ref[0].item():.4f}), gradients of {len(ref[1])} parameter tensors and "
          f"state after the step ({len(ref[2])} tensors) as {type(method).__name__}")


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
