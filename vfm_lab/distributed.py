"""Past one process: set-up under ``torchrun``, gathers for contrastive losses, SyncBatchNorm.

Everything here is a no-op in a single process, so the same method code runs in a
notebook on one CPU and under ``torchrun --nproc_per_node=8`` (the pattern of
open_clip's ``ClipLoss`` and lightly's ``gather_distributed``).

>>> x = torch.randn(4, 8, requires_grad=True)
>>> gather_with_grad(x) is x   # one process: nothing to gather
True
"""
from __future__ import annotations

import datetime
import functools
import os
import re
import sys
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from vfm_lab.errors import LabError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device, timeout_s: float = 120.0) -> bool:
    """Join the process group that ``torchrun`` describes in the environment.

    Returns False (and does nothing) outside ``torchrun``. gloo on CPU, nccl on CUDA.
    ``timeout_s`` bounds how long a collective waits for a rank that died.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


class PeerStoppedError(LabError, RuntimeError):
    """Another rank died or stopped answering while this one waited for it in a collective."""


# what gloo and NCCL say when the other side of a collective is gone or silent
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out", "timed out",
              "gloo", "NCCL")
_F = TypeVar("_F", bound=Callable)


def reports_stopped_peers(fn: _F) -> _F:
    """Decorator: under DDP, a collective inside ``fn`` that fails because another rank is gone
    raises one clear :class:`PeerStoppedError` instead of the backend's raw error (kept as its
    cause). In one process, or for any other error, nothing changes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            lost = isinstance(e, getattr(dist, "DistError", ())) or any(s in str(e) for s in _LOST_PEER)
            if world_size() == 1 or isinstance(e, PeerStoppedError) or not lost:
                raise
            me, world = rank(), world_size()
            other = f"rank {1 - me}" if world == 2 else "another rank"
            detail = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0])[:200]  # drop the C++ source path
            raise PeerStoppedError(f"{other} stopped (or stopped answering) while rank {me} of {world} waited for "
                                   f"it in a collective; rank {me} stops too. The cause is in {other}'s output "
                                   f"[{type(e).__name__}: {detail}]") from e

    return wrapper  # type: ignore[return-value]


def leave_group() -> None:
    """After a finished job: leave the process group, if one is up, as PyTorch asks every process to do at its end
    (``destroy_process_group``). Left to the interpreter's exit, the teardown of the gloo group can abort a rank
    that finished first ("terminate called without an active exception"; seen once in CI on chapter 07's job).
    No barrier: the ranks other than 0 do not wait for rank 0's evaluation."""
    if is_distributed():
        dist.destroy_process_group()


def leave_broken_group(code: int) -> None:
    """After a :class:`PeerStoppedError` has been reported: end this process with ``code`` at once if a
    process group is up. The group is broken, and the interpreter's own teardown of it at exit can abort
    after the clear error ("terminate called without an active exception", SIGABRT instead of ``code``;
    seen once in CI). Output is flushed first. Without a process group, this returns and nothing changes."""
    if is_distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank into (world_size * B, ...), rank order,
    keeping the gradient path to every rank's input (``torch.distributed.nn.all_gather``
    sums the incoming gradients back to their owner), as contrastive losses need for
    negatives from other GPUs (SimCLR, CLIP)."""
    if world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank without gradient (queues, targets, evaluation)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (for example DINO's center), in place, returned."""
    if world_size() > 1:
        dist.all_reduce(x)
        x /= world_size()
    return x


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm that computes its statistics over the global batch. Without it, local
    BN statistics leak which samples are positives (SimCLR, MoCo's shuffle-BN) and
    BYOL can collapse. A no-op in one process; PyTorch runs it on CUDA devices only."""
    if world_size() == 1:
        return model
    if device.type != "cuda":
        raise ValueError(f"sync_batchnorm=True needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only), "
                         f"not {device.type}; on CPU ranks, BatchNorm statistics stay per rank")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
