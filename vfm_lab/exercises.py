"""Automatic checks for the chapters' exercises.

>>> check("two plus two", 4.0, 4.0)
✓ two plus two: correct
>>> check("two plus two", 5.0, 4.0)
Traceback (most recent call last):
...
AssertionError: ✗ two plus two: expected 4.0, got 5.0 (hint: none)
"""
from __future__ import annotations

from typing import Any

import torch


def check(name: str, yours: Any, reference: Any, *, atol: float = 1e-5, rtol: float = 1e-4,
          hint: str = "none") -> None:
    """Compare your answer with the library's (numbers, arrays or tensors, within
    tolerance); print a tick, or raise with what was expected and a hint."""
    a = torch.as_tensor(yours, dtype=torch.float64)
    b = torch.as_tensor(reference, dtype=torch.float64)
    if a.shape != b.shape:
        raise AssertionError(f"✗ {name}: expected shape {tuple(b.shape)}, got {tuple(a.shape)} (hint: {hint})")
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        show = lambda t: t.item() if t.numel() == 1 else f"{t.flatten()[:4].tolist()}..."
        raise AssertionError(f"✗ {name}: expected {show(b)}, got {show(a)} (hint: {hint})")
    print(f"✓ {name}: correct")
