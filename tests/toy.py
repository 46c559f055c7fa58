"""A tiny method and data set for engine tests (importable by subprocess scripts too)."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from vfm_lab.backbones import build_backbone
from vfm_lab.data import ImageSet, batches, load
from vfm_lab.engine import fit
from vfm_lab.evaluate import extract_features, knn_accuracy


def toy_data(n: int = 256, seed: int = 0) -> ImageSet:
    """8x8 grayscale images whose label is whether the left half is brighter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = (x[..., :4].float().mean((1, 2, 3)) > x[..., 4:].float().mean((1, 2, 3))).long()
    return ImageSet("toy", x, y, ["right", "left"])


class ToyMethod(nn.Module):
    """Linear classifier with a random-noise augmentation (so resume must restore RNG state)
    and BatchNorm (so it has buffers); ``delay`` slows each step to leave time for a kill."""

    def __init__(self, delay: float = 0.0, hidden: int = 16):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2)
        self.delay = delay
        self.ema_calls = 0

    def forward(self, batch):
        if self.delay:
            time.sleep(self.delay)
        x = batch["image"] + 0.05 * torch.randn_like(batch["image"])
        logits = self.head(self.backbone(x))
        return {"loss": nn.functional.cross_entropy(logits, batch["label"]),
                "acc": (logits.argmax(-1) == batch["label"]).float().mean()}

    def after_step(self, step, total_steps):
        self.ema_calls += 1


class LinearToy(nn.Module):
    """A linear classifier with a fixed initialisation, no noise and no BatchNorm: runs that see the
    same images in the same steps end with the same weights (grad accumulation, DDP)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 2)

    def forward(self, batch):
        return {"loss": nn.functional.cross_entropy(self.fc(batch["image"].flatten(1)), batch["label"])}


class BNToy(nn.Module):
    """BatchNorm then a linear layer: its running statistics show which images a process saw."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 2))

    def forward(self, batch):
        return {"loss": nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])}


def attribute_knn(backbone: nn.Module, train: ImageSet, test: ImageSet, name: str) -> float:
    """kNN accuracy (k = 20) of a frozen backbone's features on the attribute ``name`` of ``test``."""
    (train_x, _), (test_x, _) = extract_features(backbone, train), extract_features(backbone, test)
    return knn_accuracy(train_x, train.attributes[name], test_x, test.attributes[name], k=20)


def short_ssl_run(build: Callable[[nn.Module], nn.Module], names: tuple[str, ...] = ("position", "colour", "size")
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """The learning test of a self-supervised method: ``build(backbone)`` trained on 1,024 ``shapes`` scenes
    at 16 px for 96 steps. Returns the attribute kNN accuracies of the backbone before and after."""
    train, test = load("shapes", "train", n=1024, image_size=16), load("shapes", "test", n=500, image_size=16)
    torch.manual_seed(0)
    backbone = build_backbone("convnet-s", 3, 16)
    before = {a: attribute_knn(backbone, train, test, a) for a in names}
    model = build(backbone)
    fit(model, train, epochs=6, batch_size=64, lr=3e-3, warmup_epochs=0.5, device="cpu", progress=False)
    return before, {a: attribute_knn(model.backbone, train, test, a) for a in names}


def one_training_step(model: nn.Module, data: ImageSet, batch_size: int = 4) -> None:
    """One forward, backward and ``after_step`` of a method on a batch of ``data`` (the engine's batch dict):
    a finite loss and a gradient in every backbone weight show that a preset's sizes fit together."""
    loss = model(next(batches(data, batch_size)))["loss"]
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    if hasattr(model, "after_step"):
        model.after_step(0, total_steps=10)
    assert math.isfinite(loss.item())
