"""SimSiam [0]: a Siamese network, a predictor and a stop-gradient -- no negatives, no momentum encoder.

Both views go through the same encoder ``f`` (backbone + projector); a predictor ``h`` maps
one view's projection to the other's. The loss is the negative cosine similarity with a
**stop-gradient** on the target side (eqs. 1-4, Algorithm 1):

    D(p, z) = - <p / ||p||, z / ||z||>,     L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2.

Algorithm 1 of the paper, which :class:`NegativeCosineLoss` and :meth:`SimSiam.forward` follow::

    z1, z2 = f(x1), f(x2)            # projections, n-by-d
    p1, p2 = h(z1), h(z2)            # predictions, n-by-d
    L = D(p1, z2)/2 + D(p2, z1)/2    # loss
    def D(p, z):
        z = z.detach()               # stop gradient
        p = normalize(p, dim=1); z = normalize(z, dim=1)
        return -(p*z).sum(dim=1).mean()

The paper's point (sec. 4): SimSiam needs neither negatives, nor large batches, nor a
momentum encoder, but it needs the stop-gradient -- without it the output collapses to a
constant in a few hundred steps, the loss reaching its minimum -1 while the std of the
normalised outputs falls to 0 (fig. 2) -- and the predictor (table 1: removing it collapses
too). ``stop_gradient=False`` and ``predictor=False`` are those ablations.

Architecture (sec. 3): the projector is a 3-layer MLP with BN on every layer, the output's
BN without affine parameters; the predictor a 2-layer bottleneck MLP (2048 -> 512 -> 2048),
BN and ReLU on the hidden layer only. Views: crops of 20-100 %, colour jitter (0.4, 0.4, 0.4,
0.1) with p = 0.8, greyscale 0.2, blur 0.5 (sec. 4 / the official ``main_simsiam.py``).

- [0] SimSiam, Chen & He, 2021, https://arxiv.org/abs/2011.10566 (Algorithm 1, sec. 3-4, fig. 2, table 1)

>>> p, z = torch.randn(8, 32, requires_grad=True), torch.randn(8, 32, requires_grad=True)
>>> loss = NegativeCosineLoss()(p, z)          # in [-1, 1]; -1 when p and z point the same way
>>> loss.backward(); z.grad is None            # stop-gradient: nothing flows into z
True
>>> from vfm_lab.backbones import build_backbone
>>> model = SimSiam(build_backbone("convnet-s", 3, 32), proj_dim=16, pred_dim=8)
>>> out = model({"image": torch.rand(4, 3, 32, 32)})
>>> sorted(out), model.embed(torch.rand(4, 3, 32, 32)).shape
(['loss', 'z_std'], torch.Size([4, 16]))
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab import augment as A
from vfm_lab.backbones import Backbone
from vfm_lab.diagnostics import embedding_std
from vfm_lab.engine import Method
from vfm_lab.methods.simclr import View, projection_mlp, two_views


class NegativeCosineLoss(nn.Module):
    """``D(p, z) = -cos(p, z)`` averaged over the batch (eq. 1), with ``z`` detached when
    ``stop_gradient`` (eq. 3); ``stop_gradient=False`` lets the gradient into both sides."""

    def __init__(self, stop_gradient: bool = True):
        super().__init__()
        self.stop_gradient = stop_gradient

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if p.ndim != 2 or p.shape != z.shape:
            raise ValueError(f"p {tuple(p.shape)} and z {tuple(z.shape)} must be (B, K) predictions and "
                             f"projections of the same B images")
        if self.stop_gradient:
            z = z.detach()
        return -F.cosine_similarity(p.float(), z.float(), dim=-1).mean()


def simsiam_views(size: int) -> A.Augment:
    """SimSiam's view recipe (``main_simsiam.py``): crops of 20-100 %, flip, jitter (0.4, 0.4,
    0.4, 0.1) with p = 0.8, greyscale 0.2, blur 0.5 -- SimCLR's colour distortion at strength 0.5."""
    return dataclasses.replace(A.simclr(size, strength=0.5, blur_p=0.5), crop_scale=(0.2, 1.0))


class SimSiam(Method):
    """A backbone pre-trained with SimSiam.

    ``proj_dim``: the projector's hidden and output width (paper 2048); ``pred_dim``: the
    predictor's bottleneck (paper 512). ``predictor=False`` or ``stop_gradient=False`` are the
    collapse ablations. ``augment`` (one recipe, or a pair) replaces :func:`simsiam_views`.
    """

    def __init__(self, backbone: Backbone, *, proj_dim: int = 2048, pred_dim: int = 512, predictor: bool = True,
                 stop_gradient: bool = True, augment: View | Sequence[View] | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(backbone.embed_dim, proj_dim, proj_dim, 3, last_bn=True)
        self.predictor = projection_mlp(proj_dim, pred_dim, proj_dim) if predictor else nn.Identity()  # h
        self.criterion = NegativeCosineLoss(stop_gradient)
        self.view1, self.view2 = two_views(augment or simsiam_views(backbone.image_size))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """z = f(x): backbone then projector, (B, proj_dim)."""
        return self.projector(self.backbone(x))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]  # (B, C, H, W)
        z1, z2 = self.embed(self.view1(x)), self.embed(self.view2(x))  # (B, K) projections
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (B, K) predictions
        loss = self.criterion(p1, z2) / 2 + self.criterion(p2, z1) / 2
        return {"loss": loss, "z_std": torch.tensor(embedding_std(z1.detach()))}
