"""Image backbones: named CPU- and GPU-sized presets over timm models.

Every pre-training method in the course trains one of these and every evaluation reads
one. A :class:`Backbone` takes images in [0, 1] and returns pooled features ``(B, D)``
(``forward``) or a grid of token features ``(B, N, D)`` (``forward_tokens``). The
architectures are timm's, never rewritten here and never loaded with pretrained weights:

| preset    | timm model                                            | embed_dim | params (3 ch, 32 px) |
|-----------|-------------------------------------------------------|-----------|----------------------|
| convnet-s | ResNet(BasicBlock, layers=[1,1,1,1], channels 32-256) | 256       | 1,238,656            |
| resnet18  | resnet18 = ResNet(BasicBlock, layers=[2,2,2,2])       | 512       | 11,168,832           |
| vit-nano  | VisionTransformer(embed_dim=128, depth=4, heads=4)    | 128       | 808,064              |
| vit-tiny  | VisionTransformer(embed_dim=192, depth=12, heads=3)   | 192       | 5,360,832            |

(measured with ``sum(p.numel() for p in build_backbone(name).parameters())``; the ViT
counts grow by ``embed_dim`` per extra patch position, e.g. at 64 px.)

- **Convnets** use the CIFAR stem of SimCLR (Chen et al., 2020, arXiv:2002.05709,
  appendix B.9): "replace the first 7x7 Conv of stride 2 with 3x3 Conv of stride 1, and
  also remove the first max pooling operation". resnet18 does exactly that, so a 32 px
  image reaches its last stage as a 4x4 map. convnet-s, the CPU preset, keeps the 3x3
  stride-1 stem but also timm's max-pool: its stages run at half the resolution, which
  halves the time of a training step on a CPU (the full-resolution activations dominate
  it) and still reaches 94 % on ``shapes`` in 6 epochs; a 32 px image ends as a 2x2 map.
  ``forward_tokens`` returns the last map's positions, ``forward`` their average (timm's
  ``global_pool='avg'``).
- **ViTs** (Dosovitskiy et al., 2021, arXiv:2010.11929) cut the image into
  ``patch_size`` x ``patch_size`` patches (4 by default: 64 patches at 32 px, 49 at 28 px)
  and pool with the class token (timm's ``global_pool='token'``). vit-tiny is DeiT-Tiny
  (Touvron et al., 2021, arXiv:2012.12877); vit-nano is this course's CPU preset, a quarter
  of DeiT-Tiny's depth with 32-dimensional heads. ``backbone.model.patch_embed``,
  ``.cls_token``, ``.pos_embed``, ``.blocks`` and ``.norm`` are timm's modules, for
  methods (MAE, BEiT) that run the encoder on a subset of the patches.

:class:`FeaturePyramid` turns a backbone into a dense map for the region and pixel chapters (08's grounder,
09's segmenter): its last three stages summed at the grid of the first (8 x 8 cells at 32 px for convnet-s),
or a ViT's patch grid.

Images are normalised inside the backbone with one constant for every channel and data
set, ``(x - 0.5) / 0.25``, which maps [0, 1] to [-2, 2]: data sets with 1 or 3 channels
and any statistics share one backbone contract.

Convnets keep their weights and activations **channels-last** (NHWC): the backbone converts
its input, so callers pass ordinary tensors. On a CPU with bf16 units the oneDNN convolutions
run a training step about 1.4x faster that way (``vfm-lab bench engine`` measures it), and
GPUs prefer the layout too.

>>> net = build_backbone("vit-nano", in_chans=1, image_size=28)
>>> x = torch.rand(2, 1, 28, 28)                              # (B, C, H, W) in [0, 1]
>>> net(x).shape, net.forward_tokens(x).shape                  # 28 / 4 = 7, 7 x 7 = 49 patches
(torch.Size([2, 128]), torch.Size([2, 49, 128]))
"""
from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vfm_lab.runtime import eval_mode

BACKBONE_NAMES = ("convnet-s", "resnet18", "vit-nano", "vit-tiny")

# name -> timm constructor arguments (without in_chans, image size and head).
_CONVNETS = {
    "convnet-s": dict(layers=(1, 1, 1, 1), channels=(32, 64, 128, 256)),
    "resnet18": dict(layers=(2, 2, 2, 2), channels=(64, 128, 256, 512)),  # timm's resnet18 arguments
}
_VITS = {
    "vit-nano": dict(embed_dim=128, depth=4, num_heads=4),   # head dim 32, mlp 512
    "vit-tiny": dict(embed_dim=192, depth=12, num_heads=3),  # DeiT-Tiny: head dim 64, mlp 768
}
VIT_NAMES = tuple(_VITS)
DEFAULT_PATCH_SIZE = 4
PYRAMID_STAGES = (2, 3, 4)  # the convnet stages FeaturePyramid reads (timm's forward_intermediates indices)

PIXEL_MEAN = 0.5  # every channel: (x - PIXEL_MEAN) / PIXEL_STD maps [0, 1] to [-2, 2]
PIXEL_STD = 0.25


class Backbone(nn.Module):
    """A timm model (no classifier head) behind one contract for every method and evaluation.

    model: a timm ``ResNet`` or ``VisionTransformer`` built with ``num_classes=0``.
    embed_dim: size of the pooled feature and of every token (timm's ``num_features``).
    patch_size: the ViT patch side in pixels; None for convnets.
    channels_last: run the model on NHWC tensors (convnets; see the module notes);
    :meth:`set_channels_last` switches a convnet to timm's NCHW layout and back.
    """

    def __init__(self, model: nn.Module, *, name: str, in_chans: int, image_size: int,
                 patch_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.in_chans = in_chans
        self.image_size = image_size
        self.patch_size = patch_size
        self.embed_dim: int = model.num_features
        self.set_channels_last(patch_size is None)

    def set_channels_last(self, on: bool) -> "Backbone":
        """Keep the weights, and convert the input, in the channels-last (``on``) or NCHW layout."""
        self.channels_last = on
        self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        return self

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] as the model takes them: ``(x - 0.5) / 0.25``, channels-last for convnets."""
        x = (x - PIXEL_MEAN) / PIXEL_STD
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) of images ``x`` (B, C, H, W) in [0, 1]."""
        return self.model(self.normalise(x))  # (B, D)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Token features (B, N, D): ViT patch tokens after the final norm, without the class
        token; convnet last-stage positions in raster order (N = H' * W')."""
        feats = self.model.forward_features(self.normalise(x))
        if self.patch_size is None:
            return feats.flatten(2).transpose(1, 2)  # (B, D, H', W') -> (B, H'*W', D)
        return feats[:, self.model.num_prefix_tokens:]  # (B, 1 + N, D) -> (B, N, D)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, in_chans={self.in_chans}, image_size={self.image_size}, "
                f"patch_size={self.patch_size}, embed_dim={self.embed_dim}")


class FeaturePyramid(nn.Module):
    """A dense feature map of a backbone for the region and pixel chapters (08, 09).

    Convnets: 1x1 lateral convs of the last three stages (``PYRAMID_STAGES``, timm's ``forward_intermediates``
    indices), summed at the grid of the first of them (FPN's top-down sum, Lin et al., 2017, without its 3x3
    smoothing): 8 x 8 cells at 32 px for convnet-s. ViTs: the patch grid, through one 1x1 conv. ``forward(backbone,
    images)`` returns that map (B, width, g, g) and the last stage itself at the same grid (B, D, g, g); the
    backbone is passed in, not held, so that it stays one module of the model that owns both.
    """

    def __init__(self, backbone: Backbone, width: int) -> None:
        super().__init__()
        if backbone.patch_size is None:
            with torch.no_grad(), eval_mode(backbone):  # in train mode the probe would move BatchNorm's statistics
                probe = backbone.model.forward_intermediates(
                    torch.zeros(1, backbone.in_chans, backbone.image_size, backbone.image_size),
                    indices=list(PYRAMID_STAGES), intermediates_only=True)
            self.grid, chans = probe[0].shape[-1], [p.shape[1] for p in probe]
        else:
            self.grid, chans = backbone.image_size // backbone.patch_size, [backbone.embed_dim]
        self.stride = backbone.image_size / self.grid  # pixels between cell centres
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)

    def forward(self, backbone: Backbone, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = backbone.normalise(images)
        if backbone.patch_size is None:
            maps = backbone.model.forward_intermediates(x, indices=list(PYRAMID_STAGES), intermediates_only=True)
        else:
            tokens = backbone.model.forward_features(x)[:, backbone.model.num_prefix_tokens:]
            maps = [tokens.transpose(1, 2).reshape(len(x), -1, self.grid, self.grid)]
        size = maps[0].shape[-2:]
        pyramid = sum(nn.functional.interpolate(lat(m), size=size, mode="nearest") for lat, m in zip(self.lateral, maps))
        return pyramid, nn.functional.interpolate(maps[-1], size=size, mode="bilinear", align_corners=False)


def build_backbone(name: str, in_chans: int = 3, image_size: int = 32, *,
                   patch_size: int | None = None) -> Backbone:
    """A freshly initialised backbone preset (see the module table); never pretrained.

    image_size must be divisible by the ViT ``patch_size`` (default 4; 7 also suits 28 px).
    ``patch_size`` applies to ViT presets only. Initialisation draws from torch's global
    generator: seed it (``torch.manual_seed``) for a reproducible build.
    """
    if name not in BACKBONE_NAMES:
        raise ValueError(f"backbone={name!r} is not a backbone; choose one of {', '.join(BACKBONE_NAMES)}")
    if in_chans < 1:
        raise ValueError(f"in_chans={in_chans} must be at least 1")
    if image_size < 1:
        raise ValueError(f"image_size={image_size} must be at least 1")
    if name in _CONVNETS:
        if patch_size is not None:
            raise ValueError(f"patch_size={patch_size} applies to ViT presets only, not to {name!r}; "
                             f"leave it None or choose one of {', '.join(_VITS)}")
        model = ResNet(BasicBlock, in_chans=in_chans, num_classes=0, **_CONVNETS[name])
        _small_image_stem(model, in_chans, keep_maxpool=name == "convnet-s")
        return Backbone(model, name=name, in_chans=in_chans, image_size=image_size)
    patch_size = DEFAULT_PATCH_SIZE if patch_size is None else patch_size
    if patch_size < 1 or image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}; choose a "
                         f"patch size that divides it (e.g. 4 for 32 px, 4 or 7 for 28 px)")
    model = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                              global_pool="token", **_VITS[name])
    return Backbone(model, name=name, in_chans=in_chans, image_size=image_size, patch_size=patch_size)


def _small_image_stem(model: ResNet, in_chans: int, keep_maxpool: bool) -> None:
    """SimCLR's CIFAR stem (appendix B.9): a 3x3 stride-1 conv instead of timm's 7x7 stride-2
    conv, and (unless ``keep_maxpool``) no max-pool; initialised as timm's ``ResNet.init_weights`` does."""
    model.conv1 = nn.Conv2d(in_chans, model.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if not keep_maxpool:
        model.maxpool = nn.Identity()
