"""Diagnostics for self-supervised training: is the representation collapsing, and what does it look at?

Without labels a loss can be minimised by a constant embedding; the non-contrastive
methods avoid that by design (predictor, stop-gradient, momentum teacher, centering)
and these numbers show whether the design held:

- **embedding std** (SimSiam, Chen & He, 2021, arXiv:2011.10566, sec. 4.1 and fig. 2): the
  per-dimension standard deviation of L2-normalised embeddings, averaged over dimensions and
  multiplied by ``sqrt(D)``. Embeddings spread over the sphere give about 1; a collapse to one
  point gives 0.
- **effective rank** (RankMe, Garrido et al., 2023, arXiv:2210.02885, eq. 1): ``exp(H(p))``
  with ``p_k = σ_k / Σ σ`` the normalised singular values of the embedding matrix; it counts
  the directions the embeddings really use (1 for a constant, D for an isotropic cloud).
- **alignment and uniformity** (Wang & Isola, 2020, arXiv:2005.10242, eqs. 4-5): the mean
  squared distance between the two views of an image, and ``log E exp(-2 ||z_i - z_j||²)``
  over pairs of images (lower is more uniform on the sphere).
- **online kNN**: the kNN accuracy of the frozen backbone after every epoch, the
  label-aware curve that the loss alone does not give.
- **CLS attention maps** (DINO, Caron et al., 2021, arXiv:2104.14294, fig. 1): where the class
  token of a ViT's last block looks, one map per head; ``attention_share`` measures how much of it
  falls on the objects of a scene.

>>> g = torch.Generator().manual_seed(0)
>>> spread, constant = torch.randn(512, 64, generator=g), torch.ones(512, 64)
>>> round(embedding_std(spread), 1), embedding_std(constant)
(1.0, 0.0)
>>> collapse_report(constant)["collapsed"], collapse_report(spread)["collapsed"]
(1.0, 0.0)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vfm_lab.backbones import Backbone
from vfm_lab.data import ImageSet
from vfm_lab.evaluate import extract_features, knn_accuracy

COLLAPSED_STD = 0.1  # below this embedding std the embeddings sit near one point
COLLAPSED_RANK = 2.0  # below this effective rank they use about one direction
COLLAPSED_UNIFORMITY = -0.2  # above this uniformity most pairs of images sit at nearly one point


def _check_embeddings(z: torch.Tensor, name: str = "z") -> None:
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"{name} must be embeddings (N, D) with N >= 2, got shape {tuple(z.shape)}")


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """``sqrt(D) * mean_d std_n(z_n / ||z_n||)`` of embeddings (N, D): ~1 spread, 0 collapsed."""
    _check_embeddings(z)
    z = F.normalize(z.float(), dim=-1)  # (N, D)
    return (z.std(dim=0).mean() * math.sqrt(z.shape[1])).item()


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe: ``exp(-Σ p_k log p_k)`` with ``p = σ / Σσ + eps`` over the singular values of z (N, D)."""
    _check_embeddings(z)
    s = torch.linalg.svdvals(z.float())  # (min(N, D),)
    p = s / s.sum().clamp_min(eps) + eps
    return torch.exp(-(p * p.log()).sum()).item()


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """``E ||f(x) - f(x⁺)||²`` over positive pairs (rows of z1 and z2), on the unit sphere: 0 is perfect."""
    _check_embeddings(z1, "z1")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must be two views of the same images")
    return (F.normalize(z1.float(), dim=-1) - F.normalize(z2.float(), dim=-1)).pow(2).sum(-1).mean().item()


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """``log E_{i≠j} exp(-t ||f(x_i) - f(x_j)||²)`` on the unit sphere: lower is more uniform, 0 is one point."""
    _check_embeddings(z)
    sq_dist = torch.pdist(F.normalize(z.float(), dim=-1)).pow(2)  # (N (N - 1) / 2,)
    return sq_dist.mul(-t).exp().mean().log().item()


def collapse_report(z1: torch.Tensor, z2: torch.Tensor | None = None) -> dict[str, float]:
    """The collapse monitor: ``std``, ``erank`` and ``uniformity`` of z1, ``alignment`` of (z1, z2)
    when a second view is given, and ``collapsed`` = 1.0 when std < 0.1, erank < 2 or uniformity > -0.2,
    else 0.0. The uniformity catches a collapse of most images to one point that a few outliers hide
    from the std."""
    report = {"std": embedding_std(z1), "erank": effective_rank(z1), "uniformity": uniformity(z1)}
    if z2 is not None:
        report["alignment"] = alignment(z1, z2)
    report["collapsed"] = float(report["std"] < COLLAPSED_STD or report["erank"] < COLLAPSED_RANK
                                or report["uniformity"] > COLLAPSED_UNIFORMITY)
    return report


class OnlineKNN:
    """kNN accuracy of a backbone's frozen features, for ``fit(on_epoch_end=OnlineKNN(...))``.

    Every ``every`` epochs it embeds ``train`` and ``test`` (at most ``max_train`` training
    images, the first ones) and returns ``{"knn_acc": ...}``; other epochs return ``{}``.
    """

    def __init__(self, backbone: Backbone, train: ImageSet, test: ImageSet, *, k: int = 20,
                 temperature: float = 0.07, every: int = 1, max_train: int = 4096) -> None:
        if every < 1 or k < 1 or max_train < 1:
            raise ValueError(f"need every >= 1, k >= 1, max_train >= 1; got every={every}, k={k}, "
                             f"max_train={max_train}")
        self.backbone, self.test, self.k, self.temperature, self.every = backbone, test, k, temperature, every
        self.train = train.subset(torch.arange(min(len(train), max_train)))

    def __call__(self, epoch: int) -> dict[str, float]:
        if (epoch + 1) % self.every:
            return {}
        train_x, train_y = extract_features(self.backbone, self.train)  # (N, D), (N,)
        test_x, test_y = extract_features(self.backbone, self.test)  # (M, D), (M,)
        return {"knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, k=min(self.k, len(train_x)),
                                        temperature=self.temperature,
                                        num_classes=max(self.train.num_classes, self.test.num_classes))}


@torch.no_grad()
def cls_attention(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """Attention of the class token to every patch in the last block, per head:
    ``softmax(q_cls · k / sqrt(d))`` for images (B, C, H, W) -> maps (B, heads, H/p, W/p).

    The maps of one image and head sum to one minus what the class token gives itself (and any
    other prefix token).
    """
    if backbone.patch_size is None:
        raise ValueError(f"cls_attention needs a ViT backbone (vit-nano, vit-tiny), got {backbone.name!r}")
    attn = backbone.model.blocks[-1].attn
    captured: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        backbone(x)
    finally:
        handle.remove()
    tokens = captured[0]  # (B, N, D): the last block's normalised input, prefix tokens first
    B, N, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, h, N, d) each
    weights = (q[:, :, :1] * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, 1, N)
    side = backbone.image_size // backbone.patch_size
    return weights[:, :, 0, backbone.model.num_prefix_tokens:].reshape(B, attn.num_heads, side, side).float()


def attention_share(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """How much of each head's attention falls on the objects: ``maps`` (B, heads, h, w) from
    :func:`cls_attention`, ``masks`` (B, H, W) with the objects nonzero (``shapes``' ``instance_masks``).
    The masks are pooled to the patch grid (the share of each patch an object covers); returns the share of
    each head's attention on the objects, averaged over the images: (heads,). A head that attends without
    regard to the objects gets the share of the image they cover, ``masks.gt(0).float().mean()``."""
    if maps.ndim != 4 or masks.ndim != 3 or len(maps) != len(masks):
        raise ValueError(f"attention_share needs maps (B, heads, h, w) and masks (B, H, W) of the same B, got "
                         f"{tuple(maps.shape)} and {tuple(masks.shape)}")
    cover = F.adaptive_avg_pool2d(masks.gt(0).float()[:, None].to(maps.device), maps.shape[-2:])  # (B, 1, h, w)
    return ((maps * cover).sum((-2, -1)) / maps.sum((-2, -1))).mean(0)
