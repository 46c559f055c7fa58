"""The engine: one loop that trains any method.

A method is a :class:`Method`: an ``nn.Module`` whose ``forward(batch)`` returns a dict with
``loss`` (plus any scalars it wants logged), and two hooks that do nothing unless the method
overrides them: ``after_step(step, total_steps)``, called after every optimizer step (EMA
teachers, temperature schedules), and ``lr_scale(parameter_name)``, a factor on that
parameter's learning rate (layer-wise lr decay, MAE's ``param_groups_lrd``; ``fit(lr_scale=...)``
gives one from outside, as fine-tuning does).
Everything else -- AdamW with per-step warm-up + cosine schedules for the learning
rate and weight decay, mixed precision, gradient accumulation and clipping, atomic
checkpoints and exact resume, a non-finite-loss guard, progress bars, a metrics log,
DDP under ``torchrun`` -- lives here once (after MAE's ``engine_pretrain.py`` and
DINO's ``utils.cosine_scheduler``).

>>> cosine_schedule(1.0, 0.0, total_steps=5, warmup_steps=1).round(3).tolist()
[0.0, 1.0, 0.854, 0.5, 0.146]
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vfm_lab import distributed as D
from vfm_lab.data import ImageSet, batches, steps_per_epoch
from vfm_lab.errors import LabError
from vfm_lab.runtime import autocast, resolve_device, resolve_precision, rng_state, seed_everything, set_rng_state

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(LabError, FloatingPointError):
    """The loss became NaN or infinite; the message says at which step and what to try."""


class CheckpointError(LabError, RuntimeError):
    """A checkpoint that is corrupt or belongs to another run (method, shapes)."""


class OutDirError(LabError, OSError):
    """An output folder that cannot be written, or has no room for the checkpoints."""


# ---- schedules and the EMA helper ----------------------------------------------------
def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Per-step values: linear warm-up from ``warmup_start`` to ``base``, then a cosine
    from ``base`` to ``final`` (DINO ``utils.cosine_scheduler``). Length ``total_steps``."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                         f"got total_steps={total_steps}, warmup_steps={warmup_steps}")
    warmup = np.linspace(warmup_start, base, warmup_steps, endpoint=False)
    t = np.arange(total_steps - warmup_steps) / max(total_steps - warmup_steps, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    schedule = np.concatenate([warmup, cosine])
    assert len(schedule) == total_steps
    return schedule


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online (MoCo eq. 2, BYOL, DINO)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


# ---- what the engine trains ------------------------------------------------------------
class Method(nn.Module):
    """What :func:`fit` trains: ``forward(batch)`` returns ``{"loss": scalar tensor, ...}``. The two
    hooks do nothing here; a method overrides those its paper needs."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` (from 0) of ``total_steps``: EMA teachers, momentum and
        temperature schedules, clamps."""

    def lr_scale(self, name: str) -> float:
        """The factor on the learning rate of parameter ``name``: 1 for every parameter here."""
        return 1.0


# ---- the result of a run -------------------------------------------------------------
@dataclass
class TrainResult:
    history: list[dict[str, float]]  # one row per logged step: step, epoch, lr, wd, loss, ...
    steps: int  # optimizer steps taken in all, including those before a resume
    seconds: float  # wall time of this call
    resumed_from: int = 0  # the step this call resumed from (0: a fresh run)
    out_dir: Path | None = None
    schedules: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return next(row["loss"] for row in reversed(self.history) if "loss" in row)  # not an on_epoch_end row


@D.reports_stopped_peers  # a rank that dies under torchrun: the others stop with one clear line
def fit(method: Method, data: ImageSet, *, epochs: int, batch_size: int, lr: float,
        weight_decay: float = 0.05, final_weight_decay: float | None = None, min_lr: float = 0.0,
        warmup_epochs: float = 0.0, grad_accum: int = 1, clip_grad: float = 0.0,
        device: str | torch.device = "auto", precision: str = "auto", seed: int = 0,
        out_dir: str | Path | None = None, resume: bool = True, checkpoint_every: int = 200,
        log_every: int = 10, sync_batchnorm: bool = False, progress: bool = True,
        on_epoch_end: Callable[[int], dict[str, float]] | None = None,
        lr_scale: Callable[[str], float] | None = None) -> TrainResult:
    """Train ``method`` on ``data`` and return its history.

    ``batch_size`` is per process and per micro-batch; one optimizer step sees
    ``batch_size * grad_accum * world_size`` images. With ``out_dir``, a checkpoint is
    written atomically every ``checkpoint_every`` steps and at the end, and a later call
    with the same ``out_dir`` resumes from it (``resume=False`` starts over). Under
    ``torchrun`` the method is wrapped in DDP and every rank reads its own shard.
    ``on_epoch_end(epoch)`` may return metrics (for example online kNN) to log. ``lr_scale``
    replaces ``method.lr_scale``: a learning-rate factor per parameter name.
    """
    _check_arguments(method, dict(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                                  checkpoint_every=checkpoint_every, log_every=log_every),
                     lr=lr, weight_decay=weight_decay, clip_grad=clip_grad)
    device = resolve_device(device) if isinstance(device, str) else device
    D.init_from_env(device)
    device = D.local_device(device)
    dtype = resolve_precision(precision, device)
    rank, world = D.rank(), D.world_size()
    per_epoch = steps_per_epoch(data, batch_size, world) // grad_accum
    if per_epoch < 1:
        raise ValueError(f"{len(data)} images of {data.name} give no full optimizer step of batch_size={batch_size} "
                         f"x grad_accum={grad_accum} x {world} rank(s); lower the batch size or grad_accum")
    total = epochs * per_epoch
    schedules = {"lr": cosine_schedule(lr, min_lr, total, round(warmup_epochs * per_epoch)),
                 "wd": cosine_schedule(weight_decay, weight_decay if final_weight_decay is None
                                       else final_weight_decay, total)}
    if sync_batchnorm:
        method = D.convert_sync_batchnorm(method, device)
    method.to(device)
    optimizer = _optimizer(method, lr, weight_decay, lr_scale or method.lr_scale)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    out = Path(out_dir) if out_dir else None
    run = dict(data=data.name, images=len(data), epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
               world_size=world, lr=lr, min_lr=min_lr, weight_decay=weight_decay, final_weight_decay=final_weight_decay,
               warmup_epochs=warmup_epochs, clip_grad=clip_grad, precision=str(dtype), seed=seed)
    seed_everything(seed * 1000 + rank)  # augmentation randomness differs per rank
    # history: one row per logged step; sums/count: the metrics of the steps since the last logged row
    step, history, (sums, count) = (_resume(out, method, run, optimizer, scaler, rank, load=resume) if out
                                    else (0, [], ({}, 0)))
    resumed_from = step
    model = nn.parallel.DistributedDataParallel(method) if world > 1 else method

    start_time = time.perf_counter()
    desc = type(method).__name__ + (f" (resumed at step {step})" if step else "")
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress or rank != 0, dynamic_ncols=True)
    method.train()
    while step < total:
        epoch, in_epoch = divmod(step, per_epoch)
        micro = batches(data, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world,
                        start=in_epoch * grad_accum, device=device)
        for _ in range(per_epoch - in_epoch):
            _set_schedules(optimizer, schedules, step)
            for i in range(grad_accum):
                sync = i == grad_accum - 1 or world == 1
                with (model.no_sync() if not sync else contextlib.nullcontext()), autocast(device, dtype):
                    outputs = model(next(micro))
                _check_finite(outputs["loss"], step, epoch, method, schedules["lr"][step], out, bar)
                scaler.scale(outputs["loss"] / grad_accum).backward()
                _add_scalars(sums, outputs, grad_accum)
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            method.after_step(step, total)
            step += 1
            count += 1
            bar.update(1)
            if step % log_every == 0 or step == total:
                row = {"step": step, "epoch": step / per_epoch, "lr": float(schedules["lr"][step - 1]),
                       "wd": float(schedules["wd"][step - 1]), **{k: v / count for k, v in sums.items()}}
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                sums, count = {}, 0
            if step % per_epoch == 0 and on_epoch_end is not None:
                method.eval()
                extra = on_epoch_end(step // per_epoch - 1)
                method.train()
                if extra:
                    history.append({"step": step, "epoch": step / per_epoch, **extra})
            if out is not None and (step % checkpoint_every == 0 or step == total):
                save_checkpoint(out / CHECKPOINT, method, optimizer, scaler, step, run, history, (sums, count))
    bar.close()
    if out is not None and rank == 0:
        _write_metrics(out / METRICS, history)
    return TrainResult(history=history, steps=step, seconds=time.perf_counter() - start_time,
                       resumed_from=resumed_from, out_dir=out, schedules=schedules)


# ---- what is not the loop --------------------------------------------------------------
def _check_arguments(method: Method, counts: dict[str, int], *, lr: float, weight_decay: float,
                     clip_grad: float) -> None:
    """Refuse a method that is not a :class:`Method` and step counts or rates that cannot train."""
    if not isinstance(method, Method):
        raise TypeError(f"fit trains a vfm_lab.engine.Method, got a {type(method).__name__}: subclass Method "
                        f"(forward(batch) -> {{'loss': ...}}; hooks after_step and lr_scale)")
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if lr <= 0 or weight_decay < 0 or clip_grad < 0:
        raise ValueError(f"need lr > 0, weight_decay >= 0, clip_grad >= 0; got lr={lr}, "
                         f"weight_decay={weight_decay}, clip_grad={clip_grad}")


def _optimizer(method: Method, lr: float, weight_decay: float, lr_scale: Callable[[str], float]
               ) -> torch.optim.AdamW:
    """AdamW over one parameter group per (decayed?, lr factor): no weight decay on biases and norm
    scales (``ndim < 2``); ``lr_scale(name)`` multiplies a parameter's scheduled lr. The two unscaled
    groups always exist, decayed first, so a run without ``lr_scale`` has the optimizer layout (and
    checkpoints) it had before ``lr_scale`` existed."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in method.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim > 1, float(lr_scale(name))), []).append(p)
    return torch.optim.AdamW([{"params": ps, "decay": decay, "lr_scale": scale,
                               "weight_decay": weight_decay if decay else 0.0}
                              for (decay, scale), ps in groups.items() if ps or scale == 1.0], lr=lr)


def _set_schedules(optimizer: torch.optim.Optimizer, schedules: dict[str, np.ndarray], step: int) -> None:
    """The learning rate (times each group's factor) and weight decay of ``step``."""
    for g in optimizer.param_groups:
        g["lr"] = schedules["lr"][step] * g["lr_scale"]
        if g["decay"]:
            g["weight_decay"] = schedules["wd"][step]


def _resume(out: Path, method: Method, run: dict, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            rank: int, load: bool) -> tuple[int, list[dict], tuple[dict, int]]:
    """Check that ``out`` can hold the checkpoints; when it holds one and ``load``, check that it is
    this run's and load the method, optimizer, scaler and this rank's random state from it. Returns
    the step, the history and the log window to go on from (0, [], empty: a fresh start)."""
    _check_writable(out, method)
    if not load or not (out / CHECKPOINT).exists():
        return 0, [], ({}, 0)
    state = load_checkpoint(out / CHECKPOINT, method, run)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
    return state["step"], state["history"], state["log_window"]


def _check_finite(loss: torch.Tensor, step: int, epoch: int, method: Method, lr: float, out: Path | None,
                  bar: tqdm) -> None:
    """Stop with a message that says where the loss stopped being a number, and what to try."""
    if not torch.isfinite(loss.detach()).item():
        bar.close()
        raise NonFiniteLossError(
            f"loss is {loss.item()} at step {step} (epoch {epoch}) of {type(method).__name__}; "
            f"lr was {lr:.3g}. Try a lower lr, clip_grad=1.0, or precision='fp32'"
            + (f"; the last checkpoint is in {out}" if out else ""))


def _add_scalars(sums: dict[str, float], outputs: dict[str, Any], grad_accum: int) -> None:
    """Add each scalar the method returned (0-d tensors, numbers), over ``grad_accum``, to ``sums``."""
    for k, v in outputs.items():
        if torch.is_tensor(v) and v.ndim == 0 or isinstance(v, (int, float)):
            sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / grad_accum


# ---- checkpoints ---------------------------------------------------------------------
def save_checkpoint(path: Path, method: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    step: int, run: dict, history: list[dict], log_window: tuple[dict, int]) -> None:
    """Write atomically (temp file + rename), from rank 0, with every rank's RNG state."""
    rngs = [rng_state()]
    if D.world_size() > 1:
        gathered: list[Any] = [None] * D.world_size()
        torch.distributed.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if D.rank() != 0:
        return
    state = {"method": type(method).__name__, "model": method.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "run": run, "history": history,
             "log_window": log_window, "rng": rngs}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    _write_metrics(path.parent / METRICS, history)


def load_checkpoint(path: Path, method: nn.Module, run: dict | None = None) -> dict:
    """Load a checkpoint into ``method`` after checking it belongs to it (and, given ``run``,
    that it was written with the same run settings); returns the state. Nothing is
    loaded when a check fails."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); "
                              f"delete it to start over, or pass resume=False") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a vfm_lab checkpoint; delete it or pass resume=False")
    if state["method"] != type(method).__name__:
        raise CheckpointError(f"{path} holds a {state['method']}, not a {type(method).__name__}; "
                              f"use another out_dir, or resume=False to start over")
    changed = {k: (v, run[k]) for k, v in state["run"].items() if run is not None and run.get(k) != v}
    if changed:
        raise CheckpointError(f"{path} was written by another run: "
                              + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                              + "; use another out_dir, or resume=False to start over")
    own = method.state_dict()
    bad = [k for k in own if k not in state["model"] or state["model"][k].shape != own[k].shape]
    extra = [k for k in state["model"] if k not in own]
    if bad or extra:
        raise CheckpointError(f"{path} does not fit this {type(method).__name__}: "
                              f"{len(bad)} missing or differently shaped tensors (e.g. {(bad or extra)[:3]}); "
                              f"use another out_dir, or resume=False to start over")
    method.load_state_dict(state["model"])
    return state


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place with
    ``os.replace``: a reader, or a run killed mid-write, never sees half a file. On failure
    the temporary file is removed and ``path`` keeps its old content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(row) + "\n" for row in history)))


def _check_writable(out: Path, method: nn.Module) -> None:
    """Fail before training when ``out`` is not writable, or has less free space than the
    checkpoints need at their peak: a new checkpoint is written beside the old one, then
    renamed over it. Its size: the method's state (weights, buffers, EMA copies, queues)
    plus AdamW's two moments per trainable parameter."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test{os.getpid()}"
        probe.write_bytes(b"\0" * 1024)
        probe.unlink()
    except OSError as e:
        raise OutDirError(f"cannot write to out_dir={str(out)!r} ({e.strerror}); choose a writable folder "
                      f"with free space") from e
    size = sum(t.numel() * t.element_size() for t in method.state_dict().values() if torch.is_tensor(t))
    size += 2 * sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    needed = size * (1 if (out / CHECKPOINT).exists() else 2) + 2**20  # + 1 MiB for metrics.jsonl and pickling
    free = shutil.disk_usage(out).free
    if free < needed:
        raise OutDirError(f"out_dir={str(out)!r} has {free / 2**20:.1f} MiB free ({free} bytes), but the checkpoints of "
                      f"this {type(method).__name__} need about {needed / 2**20:.1f} MiB ({needed} bytes); "
                      f"free some space or choose another out_dir")

