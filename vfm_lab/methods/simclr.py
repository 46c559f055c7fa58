"""SimCLR [0]: two random views of each image, a projection head, and the NT-Xent loss.

The recipe (paper fig. 2): augment every image twice (``x̃_i``, ``x̃_j``), encode both with
the backbone ``h = f(x̃)``, project with a small MLP ``z = g(h) = W2 σ(W1 h)`` (sec. 2.1;
the head is thrown away after pre-training: ``h`` is the representation, sec. 4.2), and ask
each view to pick its partner out of the ``2N - 1`` other views of the batch. That is the
normalised temperature-scaled cross-entropy, NT-Xent, eq. 1:

    ℓ(i, j) = -log  exp(sim(z_i, z_j) / τ) / Σ_{k ≠ i} exp(sim(z_i, z_k) / τ),

``sim`` the cosine similarity, summed over both orders of every positive pair and divided
by ``2N``. The ``2(N - 1)`` other views are the negatives, so a bigger batch gives more of
them (sec. 3.2, fig. 9); τ sets how hard the loss leans on the nearest negatives (table 5).

Across many GPUs the negatives must come from the global batch, and the positive of row
``i`` on rank ``r`` sits at global index ``r * B + i`` (the classic bug: ``arange(B)`` on
every rank, lightly#59). :class:`NTXentLoss` gathers with gradient only when
``world_size() > 1``.

- [0] SimCLR, Chen et al., 2020, https://arxiv.org/abs/2002.05709 (eq. 1, fig. 2, appendix B.9)

>>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)   # (B, K): two views' projections
>>> loss = NTXentLoss(temperature=0.5)
>>> bool(loss(z1, z2) > loss(z1, z1 + 0.01 * z2))      # aligned views: lower loss
True
>>> from vfm_lab.backbones import build_backbone
>>> model = SimCLR(build_backbone("convnet-s", 3, 32), proj_dim=32)
>>> out = model({"image": torch.rand(4, 3, 32, 32)})
>>> sorted(out), model.embed(torch.rand(4, 3, 32, 32)).shape
(['loss', 'z_std'], torch.Size([4, 32]))
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab import augment as A
from vfm_lab import distributed as D
from vfm_lab.backbones import Backbone
from vfm_lab.diagnostics import embedding_std
from vfm_lab.engine import Method

View = Callable[[torch.Tensor], torch.Tensor]  # images (B, C, H, W) -> one augmented view


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, *,
                   batch_norm: bool = True, last_bn: bool = False) -> nn.Sequential:
    """``num_layers`` linear layers with (BatchNorm and) ReLU between them: SimCLR's head
    (2 layers, BN in the official code), MoCo v2's (2, no BN), MoCo v3's projector (BN,
    ``last_bn=True``: a BN without affine parameters on the output, ``_build_mlp`` of the
    official code) and predictor (2).

    >>> [type(m).__name__ for m in projection_mlp(8, 16, 4)]
    ['Linear', 'BatchNorm1d', 'ReLU', 'Linear']
    >>> [type(m).__name__ for m in projection_mlp(8, 16, 4, 3, last_bn=True)][-2:]
    ['Linear', 'BatchNorm1d']
    """
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers} must be at least 1")
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == num_layers - 1
        layers.append(nn.Linear(a, b, bias=not (batch_norm and (not last or last_bn))))  # no bias before a BN
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


def two_views(augment: View | Sequence[View]) -> tuple[View, View]:
    """One recipe for both views (SimCLR), or a pair (BYOL's asymmetric blur and solarisation)."""
    if callable(augment):
        return augment, augment
    if len(augment) != 2 or not all(callable(a) for a in augment):
        raise ValueError(f"augment={augment!r} must be one view recipe or a pair of them (view 1, view 2)")
    return augment[0], augment[1]


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR eq. 1) on two views' projections ``z1, z2`` (B, K): the mean of
    ``ℓ(i, j)`` and ``ℓ(j, i)`` over every positive pair of the global batch.

    Each local row is an anchor; the candidates are the ``2 N`` views of the global batch
    ``[z1 of every rank; z2 of every rank]`` (``N = world_size * B``) minus the anchor itself.
    :meth:`targets` gives each anchor the index of its partner among them.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be positive (SimCLR: 0.5 on CIFAR, 0.1 on ImageNet)")
        self.temperature = temperature

    @staticmethod
    def targets(batch_size: int, rank: int, world_size: int, device: torch.device | None = None) -> torch.Tensor:
        """For the anchors ``[z1; z2]`` of ``rank`` (2B,), the global index of each one's positive
        among the 2N candidates ``[z1 of all ranks; z2 of all ranks]``.

        >>> NTXentLoss.targets(2, rank=1, world_size=2).tolist()   # N = 4: z1 rows 2, 3 -> z2 rows 4 + 2, 4 + 3
        [6, 7, 2, 3]
        """
        n = batch_size * world_size
        mine = torch.arange(batch_size, device=device) + rank * batch_size  # (B,) global rows of this rank
        return torch.cat([mine + n, mine])  # (2B,)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.ndim != 2 or z1.shape != z2.shape or len(z1) < 1:
            raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must be (B, K) projections of two "
                             f"views of the same B images")
        B, rank = len(z1), D.rank()
        z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)  # (B, K) on the unit sphere
        anchors = torch.cat([z1, z2])  # (2B, K)
        candidates = torch.cat([D.gather_with_grad(z1), D.gather_with_grad(z2)])  # (2N, K)
        logits = anchors @ candidates.T / self.temperature  # (2B, 2N)
        targets = self.targets(B, rank, D.world_size(), z1.device)  # (2B,)
        self_index = torch.cat([targets[B:], targets[:B]])  # each anchor's own column: k ≠ i in eq. 1
        logits = logits.scatter(1, self_index[:, None], float("-inf"))
        return F.cross_entropy(logits, targets)


class SimCLR(Method):
    """A backbone pre-trained with SimCLR.

    ``proj_dim`` is the output of the projection head (paper 128), ``hidden_dim`` its hidden
    width (paper: the backbone's width, 2048 for ResNet-50; ``None`` = ``backbone.embed_dim``),
    ``temperature`` τ of NT-Xent (0.5 on CIFAR). ``augment`` (one recipe, or a pair) replaces
    the default views, SimCLR's CIFAR recipe (appendix B.9: crop, flip, colour distortion of
    strength 0.5, no blur) at the backbone's image size.
    """

    def __init__(self, backbone: Backbone, *, proj_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.5, augment: View | Sequence[View] | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(backbone.embed_dim, hidden_dim or backbone.embed_dim, proj_dim)
        self.criterion = NTXentLoss(temperature)
        self.view1, self.view2 = two_views(augment or A.simclr(backbone.image_size, strength=0.5, blur_p=0.0))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """z = g(f(x)): the projection the loss sees, (B, proj_dim)."""
        return self.projector(self.backbone(x))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, C, H, W)
        x1, x2 = self.view1(x), self.view2(x)  # (B, C, H', W') each
        z1, z2 = self.embed(torch.cat([x1, x2])).chunk(2)  # (B, K) each: one pass, BN over both views
        return {"loss": self.criterion(z1, z2), "z_std": torch.tensor(embedding_std(z1.detach()))}
