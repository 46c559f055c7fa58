"""Pixel level (survey section 2.6): open-vocabulary semantic segmentation, LSeg in miniature.

LSeg [0] (sec. 3) segments by **matching every pixel's embedding with text embeddings**: a dense image encoder
gives a D-dimensional embedding per pixel, a locked text encoder embeds each category name (and a word for the
background), and a pixel's label is the text it matches best. The classes are whatever texts are offered, so a
category that no training mask was labelled with is still named by its text. Here, as in chapter 08's grounder:

- **Pixel embeddings**: the image tower's last stage at the feature-pyramid grid plus a correction learned from
  the pyramid (zero at the start; the heads of chapter 08's grounder),
  through the tower's CLIP projection (so training starts from the dense reading
  of the CLIP, MaskCLIP [1]), bilinearly upsampled to the image size and made unit length. Projection and
  upsampling are both linear, so projecting at the grid and then upsampling is the same as the other way round,
  at a sixteenth of the cost.
- **Text embeddings**: the locked text encoder's, computed once per text, through a trained linear map (the
  identity at the start), unit length.
- **Loss** ([0] sec. 3): per pixel, the cross-entropy of ``s · f_pixel · tᵀ`` over the training classes and the
  background, ``s`` a learned scale (LSeg's temperature); pixels labelled ``IGNORE`` do not count.

- [0] LSeg, Li et al., 2022, https://arxiv.org/abs/2201.03546
- [1] MaskCLIP, Zhou et al., 2022, https://arxiv.org/abs/2112.01071

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> table = {t: torch.randn(8) for t in (BACKGROUND, "star", "heart")}
>>> labels = torch.zeros(2, 32, 32, dtype=torch.uint8); labels[0, 4:12, 4:12] = 1
>>> model = TextSegmenter(build_backbone("convnet-s"), lambda texts: torch.stack([table[t] for t in texts]), ["star"],
...                       labels)
>>> out = model({"image": torch.rand(2, 3, 32, 32), "index": torch.tensor([0, 1])})
>>> sorted(out), model.segment(torch.rand(2, 3, 32, 32), ["star", "heart"]).shape   # labels: 0 background, 1 star, 2 heart
(['loss', 'pixel_acc'], torch.Size([2, 32, 32]))
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab.backbones import Backbone, FeaturePyramid
from vfm_lab.engine import Method
from vfm_lab.methods.glip import TextEncoder, conv_tower, embed_locked, text_projections

BACKGROUND = "background"  # the text the background pixels match (LSeg's "other")
IGNORE = 255  # a label that does not count: pixels of objects outside the categories at hand


class TextSegmenter(Method):
    """LSeg in miniature (the module notes). ``backbone``: the image tower; ``text_encoder``: texts -> (Q, E), locked;
    ``classes``: the training categories; ``labels`` (N, H, W) uint8 per training image, 0 background, ``1 + j`` for
    ``classes[j]``, :data:`IGNORE` for pixels that do not count; ``image_proj``: the image tower's projection into
    the text space (a new one when None); ``width``: channels of the pyramid and the refining convs."""

    def __init__(self, backbone: Backbone, text_encoder: TextEncoder, classes: Sequence[str], labels: torch.Tensor, *,
                 image_proj: nn.Linear | None = None, width: int = 64):
        super().__init__()
        size = backbone.image_size
        if labels.ndim != 3 or labels.shape[1:] != (size, size):
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not fit the backbone's {size}-pixel images: give "
                             f"label maps (N, {size}, {size})")
        top = int(labels[labels != IGNORE].max()) if (labels != IGNORE).any() else 0
        if top > len(classes):
            raise ValueError(f"labels go up to {top} but there are {len(classes)} classes: label 1 + j is classes[j]")
        self.backbone, self.text_encoder, self.classes = backbone, text_encoder, list(classes)
        self.labels = labels  # (N, H, W) on the CPU, read per batch
        table = self.embed_texts([BACKGROUND, *self.classes])  # (1 + C, E), once: the tower is locked
        self.register_buffer("text_table", table, persistent=False)
        dim, text_dim = backbone.embed_dim, table.shape[1]
        self.pyramid = FeaturePyramid(backbone, width)
        self.tower = conv_tower(width)
        self.refine = nn.Conv2d(width, dim, 1)  # what the pyramid adds to the dense features, zero at the start
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)
        self.image_proj, self.text_proj = text_projections(dim, text_dim, image_proj)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings (Q, E) of ``texts`` from the locked text encoder, on this model's device."""
        table = getattr(self, "text_table", None)
        return embed_locked(self.text_encoder, texts, None if table is None else table.device)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length pixel embeddings (B, E, H, W) at the image size."""
        pyramid, dense = self.pyramid(self.backbone, images)
        feats = dense + self.refine(self.tower(pyramid))  # (B, D, g, g)
        emb = self.image_proj(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, E, g, g): project, then upsample
        emb = F.interpolate(emb.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(emb, dim=1)

    def logits(self, pixels: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """``s · f · tᵀ`` (B, Q, H, W) of pixel embeddings (B, E, H, W) and locked text embeddings (Q, E) after
        ``text_proj``, in float32."""
        t = F.normalize(self.text_proj(texts).float(), dim=-1)
        return self.logit_scale.exp() * torch.einsum("behw,qe->bqhw", pixels.float(), t)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        target = self.labels[batch["index"].cpu()].to(x.device).long()  # (B, H, W)
        logits = self.logits(self.pixels(x), self.text_table)  # (B, 1 + C, H, W)
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
        counted = target != IGNORE
        acc = (logits.argmax(1) == target)[counted].float().mean()
        return {"loss": loss, "pixel_acc": acc.detach()}

    @torch.no_grad()
    def segment(self, images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """The label of each pixel (B, H, W): 0 background, ``1 + j`` for ``names[j]``, whatever the names are."""
        pixels = self.pixels(images)
        return self.logits(pixels, self.embed_texts([BACKGROUND, *names]).to(pixels)).argmax(1)
