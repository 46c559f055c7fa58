"""MoCo: contrastive learning against a slowly moving key encoder -- v2 with a queue, v3 without.

MoCo v2 [0, 1] (Algorithm 1 of [0], with v2's MLP head, blur and τ = 0.2): a query
encoder ``f_q`` (backbone + 2-layer MLP) embeds one view, a **momentum** key encoder
``f_k`` embeds the other, and the query must find its key among the keys of earlier
batches kept in a **queue** (a FIFO buffer of K normalised keys). InfoNCE, eq. 1 of [0]:

    L_q = -log  exp(q·k₊ / τ) / (exp(q·k₊ / τ) + Σ_{k₋ ∈ queue} exp(q·k₋ / τ)),

so the number of negatives (K) is decoupled from the batch size. Only ``f_q`` gets gradients;
after each step ``θ_k ← m θ_k + (1 - m) θ_q`` (eq. 2, ``engine.ema_update``), which keeps the
queued keys consistent with each other; then the batch's keys are enqueued, the oldest dequeued.
The paper's loss is asymmetric: view 1 asks, view 2 answers. ``symmetric=True`` adds the swapped
loss (view 2 asks, view 1 answers) and enqueues both views' keys, as the MoCo CIFAR-10 demo [3]
does: it "behaves like 2x epochs of the asymmetric counterpart", and SimCLR's and MoCo v3's losses
are symmetric too.

MoCo v3 [2] (Algorithm 1): no queue -- the negatives are the other keys of the (global)
batch, as in SimCLR; a **predictor** MLP on the query side (as in BYOL), a 3-layer projector
ending in BN, the momentum ``m`` following a cosine from 0.99 to 1, and a symmetric loss
``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr(q, k) = 2τ · CE(q kᵀ / τ, labels)``. Keys come from
every rank (no gradient: they are the momentum encoder's), and the positive of local row
``i`` on rank ``r`` is key ``r * B + i``.

Left out: MoCo v1/v2's shuffling BN (sec. 3.3 of [0]), which gives a query and its key BatchNorm
statistics of different images (across devices; one device can split its batch, as the MoCo CIFAR
demo's SplitBatchNorm does); at scale use SyncBatchNorm (``fit(sync_batchnorm=True)`` on GPUs), as v3 does.

- [0] MoCo, He et al., 2019, https://arxiv.org/abs/1911.05722 (eqs. 1-2, Algorithm 1)
- [1] MoCo v2, Chen et al., 2020, https://arxiv.org/abs/2003.04297
- [2] MoCo v3, Chen, Xie and He, 2021, https://arxiv.org/abs/2104.02057 (Algorithm 1)
- [3] MoCo CIFAR-10 demo, https://colab.research.google.com/github/facebookresearch/moco/blob/colab-notebook/colab/moco_cifar10_demo.ipynb

>>> from vfm_lab.backbones import build_backbone
>>> model = MoCoV2(build_backbone("convnet-s", 3, 32), proj_dim=16, queue_size=32)
>>> out = model({"image": torch.rand(8, 3, 32, 32)})
>>> sorted(out), int(model.queue_ptr)   # 8 keys enqueued
(['loss', 'momentum', 'z_std'], 8)
>>> model = MoCoV3(build_backbone("convnet-s", 3, 32), proj_dim=16, hidden_dim=32)
>>> model.after_step(0, total_steps=10); round(model.momentum, 2)   # cosine from 0.99 to 1
0.99
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab import augment as A
from vfm_lab import distributed as D
from vfm_lab.backbones import Backbone
from vfm_lab.diagnostics import embedding_std
from vfm_lab.engine import Method, cosine_schedule, ema_update
from vfm_lab.methods.simclr import View, projection_mlp, two_views


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be positive (MoCo v2: 0.2, v3: 0.2 for ViT, 1.0 for ResNet)")


class InfoNCELoss(nn.Module):
    """MoCo eq. 1: each query ``q`` (B, K) against its key ``k`` (B, K) and the queue's keys (Q, K).

    As Algorithm 1: ``logits = [q·k₊, q queueᵀ] / τ``, the positive in column 0.
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        if q.ndim != 2 or q.shape != k.shape or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"need queries and keys (B, K) and a queue (Q, K); got q {tuple(q.shape)}, "
                             f"k {tuple(k.shape)}, queue {tuple(queue.shape)}")
        q, k = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)  # (B, K)
        l_pos = (q * k).sum(-1, keepdim=True)  # (B, 1)
        l_neg = q @ F.normalize(queue.float(), dim=-1).T  # (B, Q)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature  # (B, 1 + Q)
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCoV3Loss(nn.Module):
    """MoCo v3's ``ctr(q, k)``: ``2τ · CE(q k_allᵀ / τ, rank * B + arange(B))`` with the keys of
    every rank (gathered without gradient). The factor 2τ (Algorithm 1) makes the gradient's
    scale independent of τ."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    @staticmethod
    def labels(batch_size: int, rank: int, device: torch.device | None = None) -> torch.Tensor:
        """The positive of each of this rank's queries among the keys of all ranks: its own block.

        >>> MoCoV3Loss.labels(2, rank=1).tolist()   # keys [rank 0: 0, 1 | rank 1: 2, 3]
        [2, 3]
        """
        return torch.arange(batch_size, device=device) + rank * batch_size

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if q.ndim != 2 or q.shape != k.shape:
            raise ValueError(f"queries {tuple(q.shape)} and keys {tuple(k.shape)} must both be (B, K)")
        q, k = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)  # (B, K)
        keys = D.gather(k.detach())  # (N, K): every rank's keys, rank order
        logits = q @ keys.T / self.temperature  # (B, N)
        return 2 * self.temperature * F.cross_entropy(logits, self.labels(len(q), D.rank(), q.device))


def frozen_copy(module: nn.Module) -> nn.Module:
    """The momentum (key) encoder: a copy that the optimizer never touches."""
    return copy.deepcopy(module).requires_grad_(False)


class _Momentum(Method):
    """What both MoCos share: a query backbone + projector, their momentum copies, the views."""

    def __init__(self, backbone: Backbone, projector: nn.Module, momentum: float, augment: View | Sequence[View]):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum} must lie in [0, 1] (MoCo v2: 0.999, v3: 0.99 rising to 1)")
        self.backbone, self.projector = backbone, projector
        self.key_backbone, self.key_projector = frozen_copy(backbone), frozen_copy(projector)
        self.base_momentum = self.momentum = momentum
        self.view1, self.view2 = two_views(augment)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The query projection (B, proj_dim)."""
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_projector(self.key_backbone(x))  # (B, proj_dim)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return self.base_momentum

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """θ_k ← m θ_k + (1 - m) θ_q after every optimizer step (MoCo eq. 2)."""
        self.momentum = self.momentum_at(step, total_steps)
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)


class MoCoV2(_Momentum):
    """MoCo v2: query/key encoders with a 2-layer MLP head (no BN), a queue of ``queue_size``
    keys, InfoNCE with τ = 0.2, a fixed ``momentum``. ``augment`` (one recipe or a pair)
    replaces the default views: SimCLR's recipe with blur (the "aug+" of MoCo v2).
    ``symmetric``: the mean of the loss and its swapped twin, both views' keys enqueued (the
    CIFAR-10 demo's option); False is the paper's one-way loss."""

    def __init__(self, backbone: Backbone, *, proj_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.2, queue_size: int = 65536, momentum: float = 0.999,
                 symmetric: bool = False, augment: View | Sequence[View] | None = None):
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size} must be at least 1 (MoCo: 65536 keys)")
        projector = projection_mlp(backbone.embed_dim, hidden_dim or backbone.embed_dim, proj_dim, batch_norm=False)
        super().__init__(backbone, projector, momentum, augment or A.simclr(backbone.image_size))
        self.criterion = InfoNCELoss(temperature)
        self.symmetric = symmetric
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=-1))  # (Q, K)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # where the next key goes

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Replace the oldest keys with the global batch's (rank order); wraps around. A queue
        shorter than the batch keeps the batch's last keys."""
        k = D.gather(F.normalize(k.float(), dim=-1))[-len(self.queue):]  # (N, K), N <= Q
        at = (self.queue_ptr + torch.arange(len(k), device=k.device)) % len(self.queue)  # (N,)
        self.queue[at] = k.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(k)) % len(self.queue))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, C, H, W)
        x1, x2 = self.view1(x), self.view2(x)  # (B, C, H', W') each
        queue = self.queue.clone()  # (Q, K) the negatives, as they were before this batch
        q = self.embed(x1)  # (B, K) queries, with gradient
        k = self.keys(x2)  # (B, K) keys, no gradient
        loss = self.criterion(q, k, queue)
        if self.symmetric:  # the swapped twin: view 2 asks, view 1 answers
            k1 = self.keys(x1)  # (B, K)
            loss = (loss + self.criterion(self.embed(x2), k1, queue)) / 2
            k = torch.cat([k1, k])  # (2B, K) both views' keys join the queue
        if self.training:
            self.enqueue(k)
        return {"loss": loss, "z_std": torch.tensor(embedding_std(q.detach())), "momentum": self.momentum}


class MoCoV3(_Momentum):
    """MoCo v3: a ``proj_layers``-layer projector ending in BN (3 for ViT, 2 for ResNet), a
    2-layer predictor, the symmetric ``ctr`` loss over the batch's keys (τ = 0.2), and the
    momentum rising from ``momentum`` to 1 on a cosine. ``augment`` replaces the default
    views: BYOL's asymmetric pair (blur on view 1, blur 0.1 and solarise 0.2 on view 2)."""

    def __init__(self, backbone: Backbone, *, proj_dim: int = 256, hidden_dim: int = 4096, proj_layers: int = 3,
                 temperature: float = 0.2, momentum: float = 0.99,
                 augment: View | Sequence[View] | None = None):
        size = backbone.image_size
        projector = projection_mlp(backbone.embed_dim, hidden_dim, proj_dim, proj_layers, last_bn=True)
        super().__init__(backbone, projector, momentum, augment or (A.byol_view1(size), A.byol_view2(size)))
        self.predictor = projection_mlp(proj_dim, hidden_dim, proj_dim, 2)
        self.criterion = MoCoV3Loss(temperature)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """``m = 1 - (1 - m₀)(1 + cos(π t / T)) / 2`` (``main_moco.py``, ``adjust_moco_momentum``)."""
        return float(cosine_schedule(self.base_momentum, 1.0, total_steps)[step])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, C, H, W)
        x1, x2 = self.view1(x), self.view2(x)  # (B, C, H', W') each
        z1 = self.embed(x1)  # (B, K)
        q1, q2 = self.predictor(z1), self.predictor(self.embed(x2))  # (B, K) each
        k1, k2 = self.keys(x1), self.keys(x2)  # (B, K) each, from the momentum encoder
        loss = self.criterion(q1, k2) + self.criterion(q2, k1)
        return {"loss": loss, "z_std": torch.tensor(embedding_std(z1.detach())), "momentum": self.momentum}
