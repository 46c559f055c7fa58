"""Benchmarks, as ratios measured in one process (``vfm-lab bench engine|shapes|all``).

- engine: seconds per optimizer step of :func:`vfm_lab.engine.fit` against a minimal
  hand-written PyTorch loop (same model, batch, augmentation, optimizer, precision).
  The engine's extras -- schedules, the non-finite guard, logging, progress bar -- should
  cost at most 10 %.
- shapes: images per second of ``shapes`` generation against images per second of a
  training step on them: generation must be far faster than training, so it never slows it.
"""
from __future__ import annotations

import time

import torch

from vfm_lab.backbones import build_backbone
from vfm_lab.data import batches, load
from vfm_lab.engine import fit
from vfm_lab.jobs import supervised_augment
from vfm_lab.methods.supervised import Classifier
from vfm_lab.runtime import autocast, resolve_precision

BATCH, SIZE, STEPS = 128, 32, 30


def _classifier(data) -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_backbone("convnet-s", data.channels, SIZE), data.num_classes,
                      augment=supervised_augment(SIZE))


def hand_written_loop(data, steps: int, dtype: torch.dtype) -> float:
    """The reference: the fewest lines that train the same model the same way."""
    device = torch.device("cpu")
    model = _classifier(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    start = time.perf_counter()
    for batch in batches(data, BATCH, seed=0):
        with autocast(device, dtype):
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def engine_loop(data, steps: int) -> float:
    model = _classifier(data)
    result = fit(model, data, epochs=1, batch_size=BATCH, lr=1e-3, device="cpu", precision="auto", progress=True,
                 log_every=10)
    assert result.steps == steps
    return result.seconds / steps


def bench_engine(repeats: int = 2) -> dict[str, float]:
    dtype = resolve_precision("auto", torch.device("cpu"))
    data = load("shapes", "train", n=BATCH * STEPS, image_size=SIZE)
    engine_loop(data, STEPS)  # warm-up: allocator, kernels
    ref, eng = [], []
    for _ in range(repeats):  # interleaved, best of each: the machine's noise hits both
        ref.append(hand_written_loop(data, STEPS, dtype))
        eng.append(engine_loop(data, STEPS))
    out = {"hand_written_s_per_step": min(ref), "engine_s_per_step": min(eng),
           "engine_overhead": min(eng) / min(ref) - 1, "precision": str(dtype), "threads": torch.get_num_threads()}
    return out


def bench_shapes(n: int = 4096) -> dict[str, float]:
    load("shapes", "train", n=256, image_size=SIZE)  # warm-up
    start = time.perf_counter()
    data = load("shapes", "train", n=n, image_size=SIZE, seed=1)
    generate = n / (time.perf_counter() - start)
    train = BATCH / engine_loop(data.subset(slice(0, BATCH * 10)), 10)
    return {"shapes_images_per_s": generate, "train_images_per_s": train, "generation_over_training": generate / train}


def main(what: str = "all") -> int:
    results = {}
    if what in ("engine", "all"):
        results.update(bench_engine())
    if what in ("shapes", "all"):
        results.update(bench_shapes())
    for k, v in results.items():
        print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")
    return 0
