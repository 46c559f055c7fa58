"""MaskFeat (survey section 2.4): predict hand-crafted HOG features of the masked patches.

MaskFeat [0] keeps SimMIM's encoder (a mask token in every hidden slot, a linear head) but
changes the target: instead of raw pixels, the **histograms of oriented gradients** (HOG,
Dalal and Triggs [1]) of each masked patch. HOG throws away what pixels carry but a
representation should not care about -- absolute colour and brightness, small shifts
inside a cell -- and keeps the local edge structure. The loss is the mean squared error
on the masked patches (paper sec. 3, "HOG"; 40 % of the patches masked block-wise).

HOG, as :func:`hog_cells` computes it for a batch, per channel:

1. gradients by central differences, ``g_r = I[r+1, c] - I[r-1, c]``, ``g_c = I[r, c+1] - I[r, c-1]``
   (zero on the border rows and columns, as ``skimage.feature.hog``; MaskFeat's code uses a
   Sobel filter);
2. magnitude ``sqrt(g_r² + g_c²)`` and unsigned orientation ``atan2(g_r, g_c) mod 180°``;
3. each pixel votes its magnitude into one of ``bins`` orientation bins of ``180° / bins``;
   a cell's histogram is the mean vote over its ``cell`` x ``cell`` pixels.

A patch's target is the histograms of its cells (2 x 2 cells by default, as MaskFeat's 8-px
cells in 16-px patches), all channels, flattened and L2-normalised per patch (MaskFeat's
local contrast normalisation).

- [0] MaskFeat: Wei et al., 2021, "Masked Feature Prediction for Self-Supervised Visual
  Pre-Training", https://arxiv.org/abs/2112.09133
- [1] HOG: Dalal and Triggs, 2005, "Histograms of Oriented Gradients for Human Detection",
  https://hal.inria.fr/inria-00548512

>>> from vfm_lab.backbones import build_backbone
>>> edge = torch.zeros(1, 1, 8, 8); edge[..., 4:] = 1.0        # a vertical edge: horizontal gradient
>>> h = hog_cells(edge, cell=4, bins=9)                          # (B, C, bins, H/cell, W/cell)
>>> h.shape, h[0, 0, :, 0, 1].argmax().item()                   # all votes in bin 0 (0-20 degrees)
(torch.Size([1, 1, 9, 2, 2]), 0)
>>> _ = torch.manual_seed(0)
>>> maskfeat = MaskFeat(build_backbone("vit-nano", 3, 32))      # 4-px patches: 2x2 cells of 2 px
>>> maskfeat.targets(torch.rand(2, 3, 32, 32)).shape            # (B, N, C * bins * 2 * 2)
torch.Size([2, 64, 108])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab.backbones import Backbone
from vfm_lab.methods.mae import masked_mean
from vfm_lab.methods.simmim import MaskedPrediction


def hog_cells(images: torch.Tensor, cell: int, bins: int = 9) -> torch.Tensor:
    """Histograms of oriented gradients of every channel: (B, C, H, W) -> (B, C, bins, H/cell, W/cell).

    Each entry is the mean gradient magnitude voted into that orientation bin over the cell's
    pixels (``skimage.feature.hog``'s ``orientation_histogram`` on each channel, before any
    block normalisation). Computed in the images' dtype, batched, without Python loops.
    """
    B, C, H, W = images.shape
    if cell < 1 or H % cell or W % cell:
        raise ValueError(f"cell={cell} must divide the image sides {H}x{W}")
    if bins < 1:
        raise ValueError(f"bins={bins} must be at least 1")
    g_row = F.pad(images[:, :, 2:] - images[:, :, :-2], (0, 0, 1, 1))  # (B, C, H, W), 0 on the border rows
    g_col = F.pad(images[..., 2:] - images[..., :-2], (1, 1))  # (B, C, H, W), 0 on the border columns
    magnitude = torch.hypot(g_row, g_col)  # (B, C, H, W)
    orientation = torch.rad2deg(torch.atan2(g_row, g_col)) % 180  # (B, C, H, W) in [0, 180)
    which = (orientation / (180 / bins)).floor().long().clamp_(0, bins - 1)  # (B, C, H, W)
    votes = F.one_hot(which, bins).to(images.dtype) * magnitude.unsqueeze(-1)  # (B, C, H, W, bins)
    votes = votes.permute(0, 1, 4, 2, 3).reshape(B, C * bins, H, W)  # (B, C*bins, H, W)
    return F.avg_pool2d(votes, cell).view(B, C, bins, H // cell, W // cell)  # mean vote per cell


def hog_targets(images: torch.Tensor, patch_size: int, cell: int, bins: int = 9) -> torch.Tensor:
    """MaskFeat's target per patch: its cells' histograms, every channel, L2-normalised per patch:
    (B, C, H, W) -> (B, N, C * bins * (patch_size / cell)²) in raster order of the patches."""
    if patch_size % cell:
        raise ValueError(f"cell={cell} must divide patch_size={patch_size}")
    B, C = images.shape[:2]
    k = patch_size // cell  # cells per patch side
    h = hog_cells(images, cell, bins)  # (B, C, bins, Hc, Wc)
    gh, gw = h.shape[3] // k, h.shape[4] // k  # patches per side
    h = h.reshape(B, C * bins, gh, k, gw, k).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C*bins, k, k)
    return F.normalize(h.reshape(B, gh * gw, C * bins * k * k), dim=-1)  # (B, N, C*bins*k*k)


class MaskFeat(MaskedPrediction):
    """ViT with mask tokens + a linear head regressing each masked patch's HOG (MSE).

    mask_ratio / block: the share of patches hidden and the side of the masked squares (MaskFeat
    masks 40 % block-wise). cell / bins: HOG cell side in pixels (default: half a patch) and
    orientation bins (9, as the paper).
    """

    def __init__(self, backbone: Backbone, mask_ratio: float = 0.4, block: int = 2, cell: int | None = None,
                 bins: int = 9):
        super().__init__(backbone, mask_ratio, block)
        self.cell = cell or (self.patch_size // 2 if self.patch_size % 2 == 0 else self.patch_size)
        self.bins = bins
        hog_targets(torch.zeros(1, 1, self.patch_size, self.patch_size), self.patch_size, self.cell, bins)  # validates
        dim = self.channels * bins * (self.patch_size // self.cell) ** 2
        self.head = nn.Linear(backbone.embed_dim, dim)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return hog_targets(images.float(), self.patch_size, self.cell, self.bins)  # (B, N, K)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, over the masked patches only."""
        return masked_mean((pred - target).pow(2).mean(dim=-1), mask)


def hog_picture(histograms: torch.Tensor, size: int = 9) -> torch.Tensor:
    """Draw cell histograms (bins, Hc, Wc) as the classic HOG glyphs: in every cell a line through
    the centre per bin, along the edge direction (perpendicular to the gradient), as bright as the
    bin's vote. Returns a (1, Hc*size, Wc*size) image in [0, 1]."""
    bins, hc, wc = histograms.shape
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")  # (size, size)
    glyphs = []
    for b in range(bins):
        angle = math.radians((b + 0.5) * 180 / bins + 90)  # the edge runs perpendicular to the gradient
        # distance of each pixel to the line through the centre (x = column, y = row downwards = g_row)
        dist = (xx * math.sin(angle) - yy * math.cos(angle)).abs()
        glyphs.append((dist < 0.6).float())
    glyphs = torch.stack(glyphs)  # (bins, size, size)
    h = histograms / histograms.amax().clamp_min(1e-12)  # (bins, Hc, Wc)
    picture = torch.einsum("bij,bpq->ipjq", h, glyphs).clamp(0, 1)  # (Hc, size, Wc, size)
    return picture.reshape(1, hc * size, wc * size)
