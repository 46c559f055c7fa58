"""How far each learning test clears its line, so that a margin can be read, not guessed.

A learning test trains for seconds and compares a figure with a line ("after beats twice
before", "the ablation's effective rank is under 1.5"). On another CPU the kernels, the
instruction set and the thread count move the figure a little; a test that clears its line
by a hair fails there. Each such comparison goes through :func:`above` or :func:`below`,
which assert it and, when ``$VFM_LAB_MARGINS`` names a file, append the figure, the line and
the kernel settings to it (JSON lines). ``make test-kernels`` runs the learning tests under
other CPUs' kernels and thread counts and prints, with ``python -m tests.margins FILE``, the
smallest margin of each check under each setting.

The margin is the distance to the line as a share of the line's own size, ``|value - line| /
max(|line|, floor)``: 0.5 means the figure could move by half the line before the test fails.

Which figures depend on the kernel shows in that table: the self-supervised probes (MoCo v2's gain
from 0.18 to 0.33), the collapse figures, the MAE, CLIP and digits figures move with the instruction
set and the thread count; k-means, the scikit-learn reference and the toy engine run do not.

>>> above("demo", 0.9, 0.6, floor=0.1)
0.5
>>> below("demo", 0.9, 0.6)
Traceback (most recent call last):
...
AssertionError: demo: 0.9 is not below 0.6
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import torch


def setting() -> str:
    """The kernel settings this process runs under, as the table's column name."""
    parts = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)]
    kernels = " ".join(parts) or f"own ({torch.backends.cpu.get_cpu_capability()})"
    return f"{kernels}, {torch.get_num_threads()} thread(s)"


def _record(check: str, value: float, line: float, margin: float) -> None:
    path = os.environ.get("VFM_LAB_MARGINS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(check=check, value=value, line=line, margin=margin, setting=setting())) + "\n")


def _check(check: str, value: float, line: float, floor: float, sign: int, word: str) -> float:
    value, line = float(value), float(line)
    margin = sign * (value - line) / max(abs(line), floor)
    _record(check, value, line, margin)
    if not sign * (value - line) > 0:  # raised by hand: the same message with or without pytest's assert rewriting
        raise AssertionError(f"{check}: {value:.4g} is not {word} {line:.4g}")
    return round(margin, 6)


def above(check: str, value: float, line: float, *, floor: float = 1e-3) -> float:
    """Assert ``value > line``; record and return the margin (a share of ``max(|line|, floor)``)."""
    return _check(check, value, line, floor, 1, "above")


def below(check: str, value: float, line: float, *, floor: float = 1e-3) -> float:
    """Assert ``value < line``; record and return the margin (a share of ``max(|line|, floor)``)."""
    return _check(check, value, line, floor, -1, "below")


def table(path: str) -> str:
    """Markdown: per check, the smallest margin (and its figure against the line) under each setting."""
    worst: dict[tuple[str, str], dict] = {}
    for row in map(json.loads, open(path)):
        key = (row["check"], row["setting"])
        if key not in worst or row["margin"] < worst[key]["margin"]:
            worst[key] = row
    settings = sorted({s for _, s in worst})
    checks = defaultdict(dict)
    for (check, s), row in worst.items():
        checks[check][s] = row
    lines = ["| check | " + " | ".join(settings) + " | smallest |", "|---|" + "---|" * (len(settings) + 1)]
    for check in sorted(checks):
        cells = [checks[check].get(s) for s in settings]
        fmt = lambda r: "-" if r is None else f"{r['margin']:+.2f} ({r['value']:.3g} vs {r['line']:.3g})"
        smallest = min(r["margin"] for r in cells if r)
        lines.append(f"| {check} | " + " | ".join(map(fmt, cells)) + f" | {smallest:+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
