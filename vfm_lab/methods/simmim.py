"""SimMIM (survey section 2.4): a mask token in the encoder, a linear head, an L1 loss on pixels.

Where MAE drops the hidden patches from the encoder, SimMIM [0] keeps every position:
each masked patch's embedding is replaced by one learnable ``[MASK]`` vector, the whole
sequence goes through the ViT, and a *linear* layer maps each output token back to its
patch's raw pixels. The loss is the mean absolute error over the masked pixels only
(paper eq. 1, with ``Ω(x_M)`` the number of masked pixels):

    L = 1/Ω(x_M) · || y_M - x_M ||_1

SimMIM masks square blocks larger than a patch (32-px mask patches on 16-px ViT patches,
ratio 0.6): with tiny mask units a hidden pixel is too easy to copy from its neighbours.
:func:`block_mask` draws such masks; ``block=1`` masks single patches. The encoder with mask
tokens (:func:`encode_with_mask_tokens`) is shared by MaskFeat and BEiT, which change only
the target: HOG features, or a visual tokenizer's codes.

- [0] SimMIM: Xie et al., 2021, "SimMIM: A Simple Framework for Masked Image Modeling",
  https://arxiv.org/abs/2111.09886

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> mask = block_mask(2, grid=8, mask_ratio=0.6, block=2)        # 8x8 patches, masked in 2x2 blocks
>>> mask.shape, mask.sum(1).tolist()                             # 10 of 16 blocks, 4 patches each
(torch.Size([2, 64]), [40.0, 40.0])
>>> simmim = SimMIM(build_backbone("vit-nano", 3, 32))
>>> images = torch.rand(2, 3, 32, 32)                             # (B, C, H, W) in [0, 1]
>>> simmim.predict(images, mask).shape                           # (B, N, p*p*C)
torch.Size([2, 64, 48])
>>> simmim({"image": images})["loss"].shape
torch.Size([])
"""
from __future__ import annotations

import torch
from torch import nn

from vfm_lab.backbones import Backbone
from vfm_lab.engine import Method
from vfm_lab.methods.mae import add_positions, encode_tokens, masked_mean, patch_tokens, patchify, unpatchify


def block_mask(batch: int, grid: int, mask_ratio: float, block: int = 1, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """A (batch, grid*grid) mask, 1 = masked, in raster order: the ``grid`` x ``grid`` patches are
    grouped in ``block`` x ``block`` squares and each sample hides a random
    ``n - int(n * (1 - mask_ratio))`` of its ``n = (grid / block)²`` squares (SimMIM's
    ``MaskGenerator``; the same count of hidden units as :func:`~vfm_lab.methods.mae.random_masking`)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1): the share of patches hidden")
    if block < 1 or grid % block:
        raise ValueError(f"block={block} must divide the grid of {grid}x{grid} patches; choose one of "
                         f"{', '.join(str(b) for b in range(1, grid + 1) if grid % b == 0)}")
    g = grid // block
    n = g * g
    device = generator.device if generator is not None else device
    noise = torch.rand(batch, n, generator=generator, device=device)  # (B, n)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, n): each square's place in a random order
    coarse = (ranks >= int(n * (1 - mask_ratio))).float().view(batch, g, g)  # (B, g, g)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2).flatten(1)  # (B, grid*grid)


def encode_with_mask_tokens(backbone: Backbone, images: torch.Tensor, mask: torch.Tensor,
                            mask_token: torch.Tensor) -> torch.Tensor:
    """Every patch through the ViT, the masked ones replaced by ``mask_token`` (1, 1, D) before the
    position embedding: (B, C, H, W), (B, N) -> patch tokens (B, N, D) after the final norm."""
    x = patch_tokens(backbone, images)  # (B, N, D)
    w = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    x = x * (1 - w) + mask_token.to(x.dtype) * w
    return encode_tokens(backbone, add_positions(backbone, x))[:, 1:]  # (B, N, D): drop the class token


class MaskedPrediction(Method):
    """What SimMIM, MaskFeat and BEiT share: the mask, the encoder with mask tokens, a linear head.
    Subclasses set ``head`` and define ``targets(images)`` and ``loss(pred, target, mask)``."""

    def __init__(self, backbone: Backbone, mask_ratio: float, block: int):
        super().__init__()
        if backbone.patch_size is None:
            raise ValueError(f"{type(self).__name__} needs a ViT backbone (vit-nano, vit-tiny), got {backbone.name!r}")
        self.backbone, self.mask_ratio, self.block = backbone, mask_ratio, block
        self.patch_size, self.channels = backbone.patch_size, backbone.in_chans
        self.grid = backbone.image_size // backbone.patch_size
        block_mask(1, self.grid, mask_ratio, block)  # validates the ratio and the block size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def draw_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        return block_mask(batch, self.grid, self.mask_ratio, self.block, generator, device)  # (B, N)

    def predict(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The head's output for every patch (B, N, K)."""
        return self.head(encode_with_mask_tokens(self.backbone, images, mask, self.mask_token))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]  # (B, C, H, W) in [0, 1]
        mask = self.draw_mask(len(images), images.device)  # (B, N)
        pred = self.predict(images, mask)  # (B, N, K)
        return {"loss": self.loss(pred.float(), self.targets(images), mask)}


class SimMIM(MaskedPrediction):
    """ViT with mask tokens + a linear pixel head, L1 on the masked pixels (SimMIM's defaults:
    ``mask_ratio`` 0.6, mask blocks of 2x2 patches)."""

    def __init__(self, backbone: Backbone, mask_ratio: float = 0.6, block: int = 2):
        super().__init__(backbone, mask_ratio, block)
        self.head = nn.Linear(backbone.embed_dim, self.patch_size ** 2 * self.channels)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch_size)  # (B, N, p*p*C) raw pixels in [0, 1]

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean absolute error over the masked pixels (every patch has p*p*C of them)."""
        return masked_mean((pred - target).abs().mean(dim=-1), mask)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Visible patches as they are, masked ones as predicted: (B, C, H, W) in [0, 1]."""
        pred = self.predict(images, mask).float()
        m = mask.unsqueeze(-1)
        mixed = patchify(images, self.patch_size) * (1 - m) + pred * m
        return unpatchify(mixed, self.patch_size, self.channels).clamp(0, 1)
