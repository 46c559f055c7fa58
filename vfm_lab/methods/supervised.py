"""Label supervision (survey section 2.2): a backbone, a classifier head, and a loss.

Three heads-and-losses, from the plain to the large-scale:

- cross-entropy on a linear head: ``softmax(W f + b)``;
- the large margin cosine loss, CosFace [0] (used by MOFI [1] for millions of entity
  labels): features and class weights are L2-normalised, the target logit loses a
  margin ``m`` and all logits are scaled by ``s``,
  ``L = -log( e^{s(cos θ_y - m)} / (e^{s(cos θ_y - m)} + Σ_{j≠y} e^{s cos θ_j}) )``;
- sampled softmax [2] for label spaces too large to score every class at every step:
  the softmax runs over the batch's own classes plus ``num_sampled`` random other
  classes, drawn from a proposal ``q``. Each logit is corrected by ``- log q_j`` (eq. 12
  of [2]; TensorFlow's ``subtract_log_q``), so classes the proposal favours do not win
  the softmax for being sampled often (an approximation for a sample much smaller than
  the label space). Uniform sampling (the default) makes the correction a constant,
  which drops out; then, with every class sampled, it is exactly the full cross-entropy.

- [0] CosFace, Wang et al., 2018, https://arxiv.org/abs/1801.09414
- [1] MOFI, Wu et al., 2023, https://arxiv.org/abs/2306.07952
- [2] On Using Very Large Target Vocabulary, Jean et al., 2015, https://arxiv.org/abs/1412.2007

>>> f, y = torch.randn(8, 16), torch.randint(0, 5, (8,))
>>> head = CosFaceHead(16, 5, margin=0.0, scale=1.0)
>>> torch.allclose(head(f, y), F.cross_entropy(F.normalize(f) @ F.normalize(head.weight).T, y))
True
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vfm_lab.engine import Method

LOSSES = ("ce", "cosface", "sampled")


class LinearHead(nn.Module):
    """Cross-entropy on ``W f + b``."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(embed_dim, num_classes)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)  # (B, K)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(features), labels)


class CosFaceHead(nn.Module):
    """Large margin cosine loss: ``s * (cos θ_j - m [j = y])`` into cross-entropy.

    ``scale`` s sets how peaked the softmax can get on the unit sphere (the paper uses
    64 for 10k+ identities; ~16-30 suits tens of classes); ``margin`` m in [0, 1)
    forces each class to win by at least m in cosine.
    """

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.35, scale: float = 30.0):
        super().__init__()
        if not 0.0 <= margin < 1.0 or scale <= 0:
            raise ValueError(f"CosFace needs 0 <= margin < 1 and scale > 0, got margin={margin}, scale={scale}")
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * embed_dim ** -0.5)  # (K, D)
        self.margin, self.scale = margin, scale

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).T  # (B, K) cosines

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.logits(features)  # (B, K)
        margin = F.one_hot(labels, cos.shape[1]).to(cos.dtype) * self.margin  # (B, K)
        return F.cross_entropy(self.scale * (cos - margin), labels)


class SampledSoftmaxHead(nn.Module):
    """Softmax over the batch's classes plus ``num_sampled`` others drawn from ``proposal``
    (K,) sampling probabilities (None: uniform), each logit minus ``log q_j``."""

    def __init__(self, embed_dim: int, num_classes: int, num_sampled: int = 256,
                 proposal: torch.Tensor | None = None):
        super().__init__()
        if num_sampled < 1:
            raise ValueError(f"num_sampled={num_sampled} must be at least 1")
        if proposal is not None and (proposal.shape != (num_classes,) or not (proposal > 0).all()):
            raise ValueError(f"proposal must hold {num_classes} positive sampling probabilities, one per class; "
                             f"got shape {tuple(proposal.shape)}, min {proposal.min().item():.3g}")
        self.fc = nn.Linear(embed_dim, num_classes)
        self.num_sampled = num_sampled
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("proposal", uniform if proposal is None else proposal / proposal.sum())  # (K,) q

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)  # (B, K): evaluation scores every class

    def sample_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """The batch's classes first, then negatives drawn from the proposal, without repeats."""
        positives = labels.unique()
        draws = min(self.num_sampled + len(positives), len(self.proposal))
        noise = torch.multinomial(self.proposal, draws, replacement=False)
        negatives = noise[~torch.isin(noise, positives)][: self.num_sampled]
        return torch.cat([positives, negatives])  # (C,)

    def sampled_logits(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The scores of ``classes`` only, each corrected by ``- log q_j``: (B, C)."""
        logits = features @ self.fc.weight[classes].T + self.fc.bias[classes]  # (B, C)
        return logits - self.proposal[classes].log()

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        classes = self.sample_classes(labels)  # (C,)
        remap = torch.full((self.fc.out_features,), -1, dtype=torch.long, device=labels.device)
        remap[classes] = torch.arange(len(classes), device=labels.device)
        return F.cross_entropy(self.sampled_logits(features, classes), remap[labels])


def build_head(loss: str, embed_dim: int, num_classes: int, *, margin: float = 0.35, scale: float = 30.0,
               num_sampled: int = 256) -> nn.Module:
    if loss == "ce":
        return LinearHead(embed_dim, num_classes)
    if loss == "cosface":
        return CosFaceHead(embed_dim, num_classes, margin, scale)
    if loss == "sampled":
        return SampledSoftmaxHead(embed_dim, num_classes, num_sampled)
    raise ValueError(f"loss={loss!r} is not a supervised loss; choose one of {', '.join(LOSSES)}")


class Classifier(Method):
    """A backbone trained with labels: ``forward(batch)`` augments, embeds, scores.

    ``target`` names the batch key that holds the labels (``label`` by default; any
    attribute of the data set, or a derived key, works too).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, loss: str = "ce", *,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, target: str = "label",
                 margin: float = 0.35, scale: float = 30.0, num_sampled: int = 256):
        super().__init__()
        self.backbone = backbone
        self.head = build_head(loss, backbone.embed_dim, num_classes, margin=margin, scale=scale,
                               num_sampled=num_sampled)
        self.augment, self.target = augment, target

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["image"], batch[self.target]  # (B, C, H, W), (B,)
        if self.augment is not None and self.training:
            x = self.augment(x)
        features = self.backbone(x)  # (B, D)
        loss = self.head(features.float(), y)
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices for images (B, C, H, W) in [0, 1]."""
        return self.head.logits(self.backbone(x).float()).argmax(-1)


def combination_labels(attributes: dict[str, torch.Tensor], names: tuple[str, ...],
                       sizes: dict[str, int]) -> tuple[torch.Tensor, int]:
    """One fine-grained class per combination of attribute values (mixed radix).

    With shape x colour x size x position x count on ``shapes`` this gives thousands of
    classes: a label space where scoring every class at every step starts to cost.

    >>> combination_labels({"a": torch.tensor([0, 1]), "b": torch.tensor([2, 2])}, ("a", "b"), {"a": 2, "b": 3})
    (tensor([2, 5]), 6)
    """
    label = torch.zeros_like(attributes[names[0]])
    total = 1
    for name in names:
        label = label * sizes[name] + attributes[name]
        total *= sizes[name]
    return label, total
