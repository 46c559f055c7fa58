"""Where a run executes: device, numeric precision, seeding.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("tpu")
Traceback (most recent call last):
...
ValueError: device='tpu' is not a device; choose auto, cpu, cuda, cuda:N or mps
>>> resolve_precision("fp32", torch.device("cpu"))
torch.float32
"""
from __future__ import annotations

import contextlib
import random
import re
import time
from typing import Any, Callable

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ValueError(f"device={name!r} is not a device; choose auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} was asked for, but this machine has no CUDA GPU "
                             f"(torch {torch.__version__}); use device='cpu' or 'auto'")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' was asked for, but MPS is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 units (AVX512-BF16 or AMX), where bf16 autocast is faster."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``name`` (auto, fp32, bf16, fp16) on ``device``.

    auto: bf16 on a GPU that supports it (fp16 on older GPUs), bf16 on a CPU with bf16
    units, fp32 otherwise. fp16 is refused on CPU, where autocast does not support it well.
    """
    choices = ("auto", "fp32", "bf16", "fp16")
    if name not in choices:
        raise ValueError(f"precision={name!r} is not a precision; choose one of {', '.join(choices)}")
    if name == "fp32":
        return torch.float32
    if device.type == "cuda":
        if name == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if name == "bf16" else torch.float16
    if device.type == "cpu":
        if name == "fp16":
            raise ValueError("precision='fp16' is not supported on the CPU; use 'bf16' or 'fp32'")
        if name == "auto":
            return torch.bfloat16 if cpu_supports_bf16() else torch.float32
        return torch.bfloat16
    # mps: fp16 autocast is supported, bf16 only on recent macOS
    return torch.float32 if name == "auto" else (torch.float16 if name == "fp16" else torch.bfloat16)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype``, or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode inside the block, then each of its submodules back in the mode it was in (also after
    an error). Per submodule, not ``module.train(was_training)``: a submodule shared with a model under evaluation
    (chapter 08's grounder evaluates on its CLIP's image tower and embeds its prompts with that CLIP) stays in eval.

    >>> outer, inner = torch.nn.Sequential(torch.nn.BatchNorm1d(2)), torch.nn.Sequential()
    >>> inner.shared = outer[0]
    >>> with eval_mode(outer):
    ...     with eval_mode(inner):
    ...         pass
    ...     outer[0].training
    False
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, was_training in modes:
            m.training = was_training


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random generator's state, to save in a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_steps_per_second(method: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, dtype: torch.dtype,
                           device: torch.device = torch.device("cpu")) -> float:
    """Training steps per second of ``method`` on one ``batch`` (on ``device``): forward under ``dtype``, backward,
    an AdamW step, for ``steps`` steps. For ratios between methods timed in turn in one process."""
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device, dtype):
            loss = method(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return steps / (time.perf_counter() - start)


def best_seconds(fn: Callable[[], Any], device: torch.device = torch.device("cpu"), repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (after one untimed warm-up call), in seconds, the GPU waited
    for: for comparing the costs of two parts of one model in the same process."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)
