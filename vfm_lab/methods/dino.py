"""DINO [0]: self-distillation with no labels -- a student matches a momentum teacher's sharpened, centred output.

A student ``g_θs`` and a teacher ``g_θt`` (same architecture: backbone + :class:`DINOHead`)
each turn a view into K scores. The teacher's softmax, **centred** and **sharpened** by a
low temperature, is the target of the student's softmax, through a cross-entropy
(sec. 3.1, eq. 1-3, Algorithm 1)::

    P_s(x) = softmax(g_θs(x) / τs)                     # τs = 0.1
    P_t(x) = softmax((g_θt(x) - c) / τt)                # τt = 0.04 (warm-up 0.04 -> 0.07 helps)
    L = Σ_{x ∈ {x1_g, x2_g}} Σ_{x' ∈ V, x' ≠ x} H(P_t(x), P_s(x'))      # H(a, b) = -a · log b

**Multi-crop**: the teacher sees only the two global views, the student all of them (two
global crops and ``n_local`` small local crops), so local views learn to predict the global
picture ("local-to-global", sec. 3.1). The teacher gets no gradient; it is an exponential
moving average of the student, ``θt ← λ θt + (1 - λ) θs`` with λ on a cosine from 0.996 to 1
(sec. 3.1, as BYOL). The center is an EMA of the teacher's batch mean (eq. 4),

    c ← m c + (1 - m) · mean_i g_θt(x_i),     m = 0.9,

kept as a buffer and averaged over ranks. Centering stops one dimension from dominating but
pushes towards the uniform distribution; sharpening does the opposite; together they avoid
collapse (sec. 5.3, fig. 7). ``centering=False`` (or ``teacher_temp = student_temp``, no
sharpening) is the collapse ablation.

The head (sec. 3.1, appendix): a 3-layer MLP (hidden 2048, GELU) to a 256-d bottleneck,
L2-normalised, then a weight-normalised linear layer without bias to K = 65536 scores with
its norm fixed at 1 (``norm_last_layer=True``). The original also freezes the last layer
during the first epoch; we leave that out.

- [0] DINO, Caron et al., 2021, https://arxiv.org/abs/2104.14294 (Algorithm 1, sec. 3.1, 5.3, fig. 7);
  code: https://github.com/facebookresearch/dino (``DINOLoss`` in ``main_dino.py``, ``DINOHead``)

>>> s, t = torch.randn(4, 8, 64), torch.randn(2, 8, 64)   # (Vs, B, K) student, (Vt, B, K) teacher scores
>>> loss = DINOLoss(64)
>>> float(loss(s, t)) > 0, float(loss.center.abs().sum()) > 0    # the center moved towards t's mean
(True, True)
>>> from vfm_lab.backbones import build_backbone
>>> model = DINO(build_backbone("convnet-s", 3, 32), out_dim=64, hidden_dim=32, bottleneck_dim=16, n_local=2)
>>> out = model({"image": torch.rand(4, 3, 32, 32)})
>>> sorted(out), model.embed(torch.rand(4, 3, 32, 32)).shape
(['loss', 'momentum', 'teacher_entropy', 'teacher_temp', 'z_std'], torch.Size([4, 64]))
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab import augment as A
from vfm_lab import distributed as D
from vfm_lab.backbones import Backbone
from vfm_lab.diagnostics import embedding_std
from vfm_lab.engine import Method, cosine_schedule, ema_update


class DINOHead(nn.Module):
    """MLP (``num_layers`` linear layers, GELU; BatchNorm too with ``use_bn``, the original's
    ``use_bn_in_head`` for convnets) -> bottleneck -> L2 norm -> weight-normalised linear, no bias."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers} must be at least 1")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if use_bn else []) + [nn.GELU()]
        self.mlp = nn.Sequential(*layers[:-2 if use_bn else -1])  # nothing after the bottleneck's linear layer
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO's _init_weights
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # w = g v / ||v|| per output row; g fixed at 1 makes every score a cosine (norm_last_layer)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0  # (K, 1) the norms
        g.data.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck) on the unit sphere
        return self.last_layer(x)  # (B, K) scores


class DINOLoss(nn.Module):
    """Cross-entropy of the centred, sharpened teacher softmax and the student's, over every
    (teacher view, student view) pair except a view with itself; then the center update.

    student: (Vs, B, K) scores of all views, the teacher's views first; teacher: (Vt, B, K)
    scores of the global views. ``teacher_temp`` is a buffer the method's schedule sets.
    """

    def __init__(self, out_dim: int, *, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9, centering: bool = True):
        super().__init__()
        if not (teacher_temp > 0 and student_temp > 0):
            raise ValueError(f"temperatures must be positive, got teacher_temp={teacher_temp}, "
                             f"student_temp={student_temp} (paper: 0.04-0.07 and 0.1)")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum={center_momentum} must be in [0, 1] (paper 0.9)")
        self.student_temp, self.center_momentum, self.centering = student_temp, center_momentum, centering
        self.register_buffer("center", torch.zeros(1, out_dim))  # (1, K) c
        self.register_buffer("teacher_temp", torch.tensor(float(teacher_temp)))  # τt, on its schedule

    def teacher_probs(self, teacher: torch.Tensor) -> torch.Tensor:
        """P_t = softmax((g_θt - c) / τt), no gradient: (Vt, B, K)."""
        return F.softmax((teacher.detach().float() - self.center) / self.teacher_temp, dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:] \
                or len(teacher) > len(student) or student.shape[-1] != self.center.shape[-1]:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be scores "
                             f"(V, B, K) with K={self.center.shape[-1]}, the student's views including the "
                             f"teacher's ones first")
        log_ps = F.log_softmax(student.float() / self.student_temp, dim=-1)  # (Vs, B, K)
        pt = self.teacher_probs(teacher)  # (Vt, B, K)
        ce = -torch.einsum("tbk,sbk->tsb", pt, log_ps).mean(dim=-1)  # (Vt, Vs) H(P_t, P_s) per pair of views
        loss = ce[self.pairs(len(teacher), len(student)).to(ce.device)].mean()
        if self.centering:
            self.update_center(teacher)
        return loss

    @staticmethod
    def pairs(n_teacher: int, n_student: int) -> torch.Tensor:
        """Which (teacher view, student view) pairs the loss averages: (Vt, Vs), all but a view with itself."""
        return ~torch.eye(n_teacher, n_student, dtype=torch.bool)

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """c ← m c + (1 - m) · (mean of the teacher's scores over views, images and ranks) (eq. 4)."""
        batch_center = D.all_reduce_mean(teacher.float().mean(dim=(0, 1))[None])  # (1, K)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class DINO(Method):
    """A backbone pre-trained with DINO (student = ``backbone`` + ``head``; teacher = their EMA copy).

    ``out_dim`` K, ``hidden_dim`` and ``bottleneck_dim``: the head (paper 65536, 2048, 256);
    ``use_bn_in_head`` adds BatchNorm to its MLP (the original's option; convnets want it).
    ``teacher_temp`` τt, reached from ``warmup_teacher_temp`` by a linear warm-up over the first
    ``teacher_temp_warmup`` fraction of the steps (paper: 0.04, or 0.04 -> 0.07 over 30 epochs);
    ``student_temp`` τs (0.1); ``center_momentum`` m (0.9); ``momentum`` λ_base (0.996).
    ``n_local`` local crops of ``local_size`` pixels (default half the image for convnets; a
    timm ViT preset takes one input size, so its local crops keep the full size).
    ``augment`` (the pair of global recipes) and ``local_augment`` replace DINO's recipes.
    """

    def __init__(self, backbone: Backbone, *, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, use_bn_in_head: bool = False, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, teacher_temp_warmup: float = 0.0, student_temp: float = 0.1,
                 center_momentum: float = 0.9, centering: bool = True, momentum: float = 0.996, n_local: int = 8,
                 local_size: int | None = None,
                 augment: Sequence[A.Augment] | None = None, local_augment: A.Augment | None = None):
        super().__init__()
        size, is_vit = backbone.image_size, backbone.patch_size is not None
        local_size = local_size or (size if is_vit else max(size // 2, 8))
        if is_vit and local_size != size:
            raise ValueError(f"local_size={local_size}: a ViT preset takes {size}-px images only; use "
                             f"local_size={size} (local crops upsampled) or a convnet backbone")
        if not 0.0 <= momentum <= 1.0 or not 0.0 <= teacher_temp_warmup <= 1.0:
            raise ValueError(f"momentum={momentum} and teacher_temp_warmup={teacher_temp_warmup} must be in [0, 1]")
        self.backbone = backbone
        self.head = DINOHead(backbone.embed_dim, out_dim, hidden_dim, bottleneck_dim, use_bn=use_bn_in_head)
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.criterion = DINOLoss(out_dim, teacher_temp=warmup_teacher_temp, student_temp=student_temp,
                                  center_momentum=center_momentum, centering=centering)
        self.teacher_temps = (warmup_teacher_temp, teacher_temp, teacher_temp_warmup)
        self.base_momentum = self.momentum = momentum
        self.schedules: dict[str, np.ndarray] = {}  # built at the first step, once the run length is known
        self.global_views = list(augment or A.dino_global(size))
        self.local_view = local_augment or A.dino_local(local_size)
        self.n_local = n_local

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The student's pre-softmax scores g_θs(x), (B, K)."""
        return self.head(self.backbone(x))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        x = batch["image"]  # (B, C, H, W)
        B = len(x)
        views = A.multi_crop(x, self.global_views, self.local_view, self.n_local)  # globals, then locals
        n_global = len(self.global_views)
        globals_ = torch.cat(views[:n_global])  # (Vt*B, C, H, W)
        student = [self.embed(globals_)]  # (Vt*B, K)
        if self.n_local:
            student.append(self.embed(torch.cat(views[n_global:])))  # (n_local*B, K) at the local size
        student = torch.cat(student).view(len(views), B, -1)  # (Vs, B, K)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(globals_)).view(n_global, B, -1)  # (Vt, B, K)
            pt = self.criterion.teacher_probs(teacher)  # (Vt, B, K), before the center moves
            entropy = -(pt * pt.clamp_min(1e-12).log()).sum(-1).mean()  # log K: uniform, 0: one-hot
        loss = self.criterion(student, teacher)
        return {"loss": loss, "z_std": torch.tensor(embedding_std(student[0].detach())), "momentum": self.momentum,
                "teacher_temp": float(self.criterion.teacher_temp), "teacher_entropy": entropy}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Teacher EMA with λ on its cosine schedule; τt for the next step on its warm-up schedule."""
        if len(self.schedules.get("momentum", ())) != total_steps:
            start, final, warmup = self.teacher_temps
            self.schedules = {"momentum": cosine_schedule(self.base_momentum, 1.0, total_steps),
                              "teacher_temp": cosine_schedule(final, final, total_steps, round(warmup * total_steps),
                                                              warmup_start=start)}
        self.momentum = float(self.schedules["momentum"][step])
        ema_update(self.teacher_backbone, self.backbone, self.momentum)
        ema_update(self.teacher_head, self.head, self.momentum)
        self.criterion.teacher_temp.fill_(self.schedules["teacher_temp"][min(step + 1, total_steps - 1)])
