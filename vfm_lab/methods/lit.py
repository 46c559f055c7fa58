"""LiT [0]: a locked pre-trained image tower, and a text tower trained to read it (survey section 2.5).

Contrastive tuning (sec. 2) starts a two-tower model from pre-trained weights and names each
tower's treatment: **L**ocked (pre-trained, frozen), **U**nlocked (pre-trained, trained) or **u**
(from scratch). LiT is *Lu*: the image tower comes from image pre-training (labels or
self-supervision) and stays frozen, BatchNorm statistics and all; only the text tower and the
temperature learn, so that its embeddings land on the image tower's fixed ones. The paper (fig. 3,
table 1) finds *Lu* better than training both (*Uu*, *uu*), and locking the *text* tower worse
(chapter 02's locked MiniLM is that configuration, ``uL``). The image embedding is the tower's
own feature: no trainable image projection; the text tower projects into that width.

- [0] LiT: Zhai et al., 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning",
  https://arxiv.org/abs/2111.07991

>>> from vfm_lab.backbones import build_backbone
>>> lit = LiT(build_backbone("convnet-s"), ["a red circle", "a blue square"])
>>> [n for n, p in lit.named_parameters() if p.requires_grad and n.startswith("backbone")]
[]
>>> lit.train().backbone.training                             # locked: BatchNorm keeps its statistics
False
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from vfm_lab.backbones import Backbone
from vfm_lab.methods.clip import ClipModel


class LiT(ClipModel):
    """A :class:`ClipModel` whose image tower ``backbone`` is locked: frozen, always in eval mode,
    its pooled feature the image embedding (``embed_dim`` = the backbone's width)."""

    def __init__(self, backbone: Backbone, captions: Sequence[str], **kw):
        if kw.get("text_tower") == "minilm-locked":
            raise ValueError("text_tower='minilm-locked' would lock both towers; LiT trains the text tower "
                             "(scratch-s, scratch-b)")
        if "embed_dim" in kw and kw["embed_dim"] != backbone.embed_dim:
            raise ValueError(f"embed_dim={kw['embed_dim']}: LiT embeds images with the locked tower's own "
                             f"{backbone.embed_dim}-d feature; leave embed_dim out")
        super().__init__(backbone, captions, **{**kw, "embed_dim": backbone.embed_dim})
        self.image_proj = nn.Identity()  # nothing trainable on the image side
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "LiT":
        super().train(mode)
        self.backbone.eval()  # locked: no BatchNorm statistics move, no dropout
        return self
