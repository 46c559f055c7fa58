"""SLIP [0]: CLIP's loss plus SimCLR's on the same image tower (survey section 2.5).

Language supervision and self-supervision ask different things of one image tower: CLIP pulls an
image towards its caption, SimCLR pulls two augmented views of the image together. SLIP (fig. 1)
trains both at once and adds the losses,

    L = L_CLIP(image, caption) + λ · L_SimCLR(view 1, view 2),

with its own projection head on the SimCLR side (sec. 3: a 3-layer MLP, BN, 4096 hidden, 256 out,
NT-Xent at τ = 0.1) and λ = 1 (the ``ssl_scale``). The CLIP branch sees the lightly cropped image,
the SimCLR branch two strongly augmented views, so one step runs the image tower three times.
Here the SimCLR side *is* chapter 03's :class:`~vfm_lab.methods.simclr.SimCLR`, sharing the
backbone: its head, views and NT-Xent come with it.

- [0] SLIP: Mu et al., 2021, "SLIP: Self-supervision meets Language-Image Pre-training",
  https://arxiv.org/abs/2112.12750

>>> from vfm_lab.backbones import build_backbone
>>> _ = torch.manual_seed(0)
>>> slip = SLIP(build_backbone("convnet-s"), ["a red circle", "a blue square"], embed_dim=16, ssl_proj_dim=8)
>>> out = slip({"image": torch.rand(2, 3, 32, 32), "index": torch.tensor([0, 1])})
>>> sorted(out)
['clip_loss', 'loss', 'ssl_loss', 'temperature']
>>> bool(torch.isclose(out["loss"], out["clip_loss"] + out["ssl_loss"]))    # lambda = 1
True
"""
from __future__ import annotations

from typing import Sequence

import torch

from vfm_lab.backbones import Backbone
from vfm_lab.methods.clip import ClipModel
from vfm_lab.methods.simclr import SimCLR, View


class SLIP(ClipModel):
    """A :class:`ClipModel` whose image tower also trains with SimCLR (``ssl``, sharing ``backbone``).

    ssl_scale: λ on the SimCLR loss (paper 1). ssl_temperature, ssl_proj_dim, ssl_hidden_dim: NT-Xent's τ
    (paper 0.1) and the SimCLR head's output and hidden sizes (paper 256 and 4096; ``None`` = the
    backbone's width). ssl_augment: SimCLR's views (default: chapter 03's recipe). The rest goes to
    :class:`ClipModel`.
    """

    def __init__(self, backbone: Backbone, captions: Sequence[str], *, ssl_scale: float = 1.0,
                 ssl_temperature: float = 0.1, ssl_proj_dim: int = 128, ssl_hidden_dim: int | None = None,
                 ssl_augment: View | Sequence[View] | None = None, **kw):
        if ssl_scale < 0:
            raise ValueError(f"ssl_scale={ssl_scale} must be at least 0 (SLIP: 1; 0 trains CLIP alone)")
        super().__init__(backbone, captions, **kw)
        self.ssl = SimCLR(backbone, proj_dim=ssl_proj_dim, hidden_dim=ssl_hidden_dim, temperature=ssl_temperature,
                          augment=ssl_augment)
        self.ssl_scale = ssl_scale

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().forward(batch)  # CLIP's loss and temperature
        ssl = self.ssl(batch)["loss"]  # NT-Xent of two views through the same backbone
        return {**out, "loss": out["loss"] + self.ssl_scale * ssl, "clip_loss": out["loss"].detach(),
                "ssl_loss": ssl.detach()}
