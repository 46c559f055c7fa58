"""Masked image modeling with CLIP targets (BEiT v2 [0], MVP [1], EVA [2]; survey section 2.5).

Chapter 05's SimMIM, MaskFeat and BEiT differ only in what a masked patch must predict: pixels, HOG,
a k-means token. These papers predict the *features of a trained CLIP image tower* instead: the
teacher sees the whole image, the student (a ViT with mask tokens, as SimMIM) sees it with blocks
hidden, and a linear head on each of the student's patch tokens regresses the teacher's feature of
that patch. The target carries what language supervision put into the teacher, so the student
learns semantics rather than pixel statistics: MVP and EVA regress the features directly with a
cosine loss,

    L = 1/|M| Σ_{k ∈ M} (1 - cos(h_k, t_k)),

``h_k`` the head's output and ``t_k`` the teacher's feature at masked patch ``k``; BEiT v2 first
quantises them into visual tokens (VQ-KD) and predicts those. ``loss="smooth_l1"`` regresses the
features, each normalised to unit length, with a smooth L1 loss instead.

The teacher here is any trained backbone of this library (chapter 02's CLIP image tower), frozen and
in eval mode. Its token features (:meth:`~vfm_lab.backbones.Backbone.forward_tokens`) are resized to
the student's patch grid when they differ: a convnet's last stage is coarser than the ViT's grid.

- [0] BEiT v2: Peng et al., 2022, https://arxiv.org/abs/2208.06366
- [1] MVP: Wei et al., 2022, "MVP: Multimodality-guided Visual Pre-training", https://arxiv.org/abs/2203.05175
- [2] EVA: Fang et al., 2023, https://arxiv.org/abs/2211.07636

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> mim = ClipTargetMIM(build_backbone("vit-nano"), teacher=build_backbone("convnet-s"))
>>> mim.targets(torch.rand(2, 3, 32, 32)).shape                  # the teacher's feature per student patch
torch.Size([2, 64, 256])
>>> mim({"image": torch.rand(2, 3, 32, 32)})["loss"].shape
torch.Size([])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab.backbones import Backbone
from vfm_lab.methods.mae import masked_mean
from vfm_lab.methods.simmim import MaskedPrediction

LOSSES = ("cosine", "smooth_l1")


class ClipTargetMIM(MaskedPrediction):
    """A ViT with mask tokens (SimMIM's encoder) + a linear head regressing a frozen ``teacher``'s
    token features at the masked patches. mask_ratio / block: the share of patches hidden and the side
    of the hidden squares (BEiT v2: 40 % block-wise). loss: ``cosine`` (MVP, EVA) or ``smooth_l1``."""

    def __init__(self, backbone: Backbone, teacher: Backbone, mask_ratio: float = 0.4, block: int = 2,
                 loss: str = "cosine"):
        super().__init__(backbone, mask_ratio, block)
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is not a feature-regression loss; choose one of {', '.join(LOSSES)}")
        if (teacher.image_size, teacher.in_chans) != (backbone.image_size, backbone.in_chans):
            raise ValueError(f"the teacher takes {teacher.in_chans}-channel {teacher.image_size}-px images and the "
                             f"student {backbone.in_chans}-channel {backbone.image_size}-px ones: train the "
                             f"teacher on the student's images")
        self.teacher = teacher.requires_grad_(False).eval()
        self.loss_name = loss
        self.head = nn.Linear(backbone.embed_dim, teacher.embed_dim)

    def train(self, mode: bool = True) -> "ClipTargetMIM":
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm statistics stay the teacher's
        return self

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's token features (B, N, D_teacher), one per student patch in raster order."""
        tokens = self.teacher.forward_tokens(images).float()  # (B, N', D_t)
        if tokens.shape[1] != self.grid ** 2:  # a coarser (or finer) map: resize it to the patch grid
            side = int(tokens.shape[1] ** 0.5)
            grid = tokens.transpose(1, 2).reshape(len(tokens), -1, side, side)  # (B, D_t, side, side)
            grid = F.interpolate(grid, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            tokens = grid.flatten(2).transpose(1, 2)  # (B, N, D_t)
        return tokens

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss per masked patch, averaged over the masked patches only."""
        if self.loss_name == "cosine":
            return masked_mean(1 - F.cosine_similarity(pred, target, dim=-1), mask)
        per_patch = F.smooth_l1_loss(F.normalize(pred, dim=-1), F.normalize(target, dim=-1), reduction="none")
        return masked_mean(per_patch.sum(-1), mask)
