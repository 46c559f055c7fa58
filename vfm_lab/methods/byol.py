"""BYOL [0]: bootstrap your own latent -- no negatives, a predictor and a moving-average target.

Two networks see two views of an image (paper fig. 2). The **online** network (backbone
``f_θ``, projector ``g_θ``, predictor ``q_θ``) predicts the **target** network's projection
of the other view; the target (``f_ξ``, ``g_ξ``) has no predictor, gets no gradient, and its
weights are an exponential moving average of the online ones (sec. 3.1):

    ξ ← τ ξ + (1 - τ) θ,   τ = 1 - (1 - τ_base) (cos(π k / K) + 1) / 2,

``τ_base = 0.996`` rising to 1 over the ``K`` training steps (sec. 3.2). The loss is the
mean squared error of the L2-normalised prediction and target projection (eq. 2),

    L_θ,ξ = || q̄_θ(z_θ) - z̄'_ξ ||²  =  2 - 2 · <q_θ(z_θ), z'_ξ> / (||q_θ(z_θ)|| · ||z'_ξ||),

symmetrised by feeding view 2 to the online network and view 1 to the target
(``L^BYOL = L + L̃``). Nothing in the loss forbids a constant output; what keeps BYOL away
from it is the predictor together with the slowly moving target (sec. 3.2, table 5b:
removing the predictor collapses). ``predictor=False`` is that ablation.

Views: BYOL's asymmetric pair (table 6: view 1 always blurred, view 2 rarely blurred and
sometimes solarised), ``augment.byol_view1`` / ``byol_view2``.

- [0] BYOL, Grill et al., 2020, https://arxiv.org/abs/2006.07733 (eq. 2, sec. 3.1-3.2, table 6)

>>> p, z = torch.randn(8, 32), torch.randn(8, 32)            # (B, K): prediction, target projection
>>> loss = BYOLLoss()
>>> float(loss(z, z)) < 1e-6, 0.0 <= float(loss(p, z)) <= 4.0  # 0 when aligned, at most 4 when opposite
(True, True)
>>> from vfm_lab.backbones import build_backbone
>>> model = BYOL(build_backbone("convnet-s", 3, 32), proj_dim=16, hidden_dim=32)
>>> out = model({"image": torch.rand(4, 3, 32, 32)})
>>> sorted(out), model.embed(torch.rand(4, 3, 32, 32)).shape
(['loss', 'momentum', 'z_std'], torch.Size([4, 16]))
>>> model.after_step(0, total_steps=100); round(model.momentum, 4)   # tau_0 = tau_base
0.996
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab import augment as A
from vfm_lab.backbones import Backbone
from vfm_lab.diagnostics import embedding_std
from vfm_lab.engine import Method, cosine_schedule, ema_update
from vfm_lab.methods.simclr import View, projection_mlp, two_views


class BYOLLoss(nn.Module):
    """Eq. 2: ``2 - 2 cos(p, z)`` per pair, averaged over the batch. ``z`` (the target's
    projection) carries no gradient: it is detached here as well as computed under no_grad."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if p.ndim != 2 or p.shape != z.shape:
            raise ValueError(f"p {tuple(p.shape)} and z {tuple(z.shape)} must be (B, K) predictions and target "
                             f"projections of the same B images")
        p = F.normalize(p.float(), dim=-1)  # (B, K) q̄
        z = F.normalize(z.detach().float(), dim=-1)  # (B, K) z̄'
        return (2 - 2 * (p * z).sum(dim=-1)).mean()


class BYOL(Method):
    """A backbone pre-trained with BYOL.

    ``proj_dim`` and ``hidden_dim``: the projector's and predictor's output and hidden widths
    (paper 256 and 4096; both are ``Linear-BN-ReLU-Linear``, sec. 3.3). ``momentum``: τ_base
    (paper 0.996; 0.99 suits short runs, sec. 3.3 / appendix). ``predictor=False`` drops the
    predictor (the collapse ablation). ``augment`` (one recipe, or a pair) replaces BYOL's views.
    """

    def __init__(self, backbone: Backbone, *, proj_dim: int = 256, hidden_dim: int = 4096,
                 momentum: float = 0.996, predictor: bool = True,
                 augment: View | Sequence[View] | None = None):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1] (paper 0.996; 1 freezes the target)")
        self.backbone = backbone  # f_θ
        self.projector = projection_mlp(backbone.embed_dim, hidden_dim, proj_dim)  # g_θ
        self.predictor = projection_mlp(proj_dim, hidden_dim, proj_dim) if predictor else nn.Identity()  # q_θ
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)  # f_ξ
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)  # g_ξ
        self.criterion = BYOLLoss()
        self.base_momentum = self.momentum = momentum
        self.schedule = np.array([])  # τ per step, built at the first step once the run length is known
        size = backbone.image_size
        self.view1, self.view2 = two_views(augment or (A.byol_view1(size), A.byol_view2(size)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """z_θ = g_θ(f_θ(x)): the online projection, (B, proj_dim)."""
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """z'_ξ = g_ξ(f_ξ(x)), no gradient, (B, proj_dim)."""
        return self.target_projector(self.target_backbone(x))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        x = batch["image"]  # (B, C, H, W)
        v1, v2 = self.view1(x), self.view2(x)  # (B, C, H, W) each
        z1, z2 = self.embed(v1), self.embed(v2)  # (B, K) online projections
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (B, K) predictions
        t1, t2 = self.target(v1), self.target(v2)  # (B, K) target projections
        loss = self.criterion(p1, t2) + self.criterion(p2, t1)  # L + L̃
        return {"loss": loss, "z_std": torch.tensor(embedding_std(z1.detach())), "momentum": self.momentum}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """ξ ← τ ξ + (1 - τ) θ with τ on its cosine schedule (the engine calls this after each step)."""
        if len(self.schedule) != total_steps:
            self.schedule = cosine_schedule(self.base_momentum, 1.0, total_steps)  # (K,) τ_base -> 1
        self.momentum = float(self.schedule[step])
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)

