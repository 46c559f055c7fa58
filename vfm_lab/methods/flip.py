"""FLIP [0]: CLIP with most image patches dropped in training, to go faster (survey section 2.5).

A ViT image tower costs in proportion to its tokens. FLIP (fig. 2) removes a random share of each
image's patches before the encoder, as MAE does, and trains CLIP on what is left: at 50 % masking a
step costs about half and a batch twice as large fits the same memory; the paper trades that for
more pairs per second and finds the zero-shot accuracy per hour of training higher. At test time the
tower sees every patch; a short *unmasking tuning* at the end (sec. 3) closes the gap between the
masked training and the full test images. There is no decoder and no reconstruction loss.

The masking is MAE's (:func:`~vfm_lab.methods.mae.random_masking`): the patch tokens with their
positions, a random subset kept per image, the class token and the blocks on those only
(:func:`~vfm_lab.methods.mae.encode_tokens`), then the ViT's own pooling (timm's ``forward_head``).

- [0] FLIP: Li et al., 2023, "Scaling Language-Image Pre-training via Masking",
  https://arxiv.org/abs/2212.00794

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> flip = FLIP(build_backbone("vit-nano"), ["a red circle", "a blue square"], patch_drop=0.75, embed_dim=16)
>>> flip.visible_tokens(torch.rand(2, 3, 32, 32)).shape       # 64 patches, a quarter kept
torch.Size([2, 16, 128])
>>> flip.encode_image(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 16])
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vfm_lab.backbones import Backbone
from vfm_lab.methods.clip import ClipModel
from vfm_lab.methods.mae import add_positions, encode_tokens, patch_tokens, random_masking


class FLIP(ClipModel):
    """A :class:`ClipModel` with a ViT image tower that, in training mode, encodes a random
    ``1 - patch_drop`` share of each image's patches (the paper: 0.5 or 0.75). In eval mode, or with
    ``patch_drop = 0`` (set it for the unmasking tuning), the tower sees every patch."""

    def __init__(self, backbone: Backbone, captions: Sequence[str], *, patch_drop: float = 0.5, **kw):
        if backbone.patch_size is None:
            raise ValueError(f"FLIP drops patches of a ViT image tower (vit-nano, vit-tiny), got {backbone.name!r}")
        random_masking(torch.zeros(1, 1, 1), patch_drop)  # validates the ratio
        super().__init__(backbone, captions, **kw)
        self.patch_drop = patch_drop

    def visible_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The positioned patch tokens the encoder keeps, (B, int(N (1 - patch_drop)), D)."""
        return random_masking(add_positions(self.backbone, patch_tokens(self.backbone, images)), self.patch_drop)[0]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.patch_drop > 0):
            return super().encode_image(images)  # every patch
        tokens = encode_tokens(self.backbone, self.visible_tokens(images))  # (B, 1 + N_keep, D)
        pooled = self.backbone.model.forward_head(tokens)  # (B, D): the ViT's pooling of what it saw
        return F.normalize(self.image_proj(pooled).float(), dim=-1)
