"""A tiny method and data set for engine tests (importable by subprocess scripts too)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vfm_lab.backbones import build_backbone
from vfm_lab.data import ImageSet, batches, load
from vfm_lab.engine import Method, fit
from vfm_lab.evaluate import attribute_probes, extract_features


def toy_data(n: int = 256, seed: int = 0) -> ImageSet:
    """8x8 grayscale images whose label is whether the left half is brighter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = (x[..., :4].float().mean((1, 2, 3)) > x[..., 4:].float().mean((1, 2, 3))).long()
    return ImageSet("toy", x, y, ["right", "left"])


class ToyMethod(Method):
    """Linear classifier with a random-noise augmentation (so resume must restore RNG state)
    and BatchNorm (so it has buffers). With ``hang_at=N`` and ``hung=PATH`` the N-th forward pass
    writes PATH and then waits forever: a process to kill at a known step, however busy the CPU."""

    def __init__(self, hidden: int = 16, hang_at: int = 0, hung: str = ""):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2)
        self.hang_at, self.hung, self.calls = hang_at, hung, 0
        self.ema_calls = 0

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.hang_at:
            Path(self.hung).write_text(str(self.calls))
            while True:
                time.sleep(1)
        x = batch["image"] + 0.05 * torch.randn_like(batch["image"])
        logits = self.head(self.backbone(x))
        return {"loss": nn.functional.cross_entropy(logits, batch["label"]),
                "acc": (logits.argmax(-1) == batch["label"]).float().mean()}

    def after_step(self, step, total_steps):
        self.ema_calls += 1


class LinearToy(Method):
    """A linear classifier with a fixed initialisation, no noise and no BatchNorm: runs that see the
    same images in the same steps end with the same weights (grad accumulation, DDP)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 2)

    def forward(self, batch):
        return {"loss": nn.functional.cross_entropy(self.fc(batch["image"].flatten(1)), batch["label"])}


class BNToy(Method):
    """BatchNorm then a linear layer: its running statistics show which images a process saw."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 2))

    def forward(self, batch):
        return {"loss": nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])}


def probes(backbone: nn.Module, train: ImageSet, test: ImageSet, names: tuple[str, ...]) -> dict[str, float]:
    """Linear-probe accuracy of a frozen backbone's features on each attribute in ``names`` of ``test``."""
    (train_x, _), (test_x, _) = extract_features(backbone, train), extract_features(backbone, test)
    pick = lambda attrs: {a: attrs[a] for a in names}
    return {a: r["acc"] for a, r in attribute_probes(train_x, pick(train.attributes), test_x,
                                                       pick(test.attributes)).items()}


def short_ssl_run(build: Callable[[nn.Module], nn.Module], names: tuple[str, ...] = ("position", "colour", "size")
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """The learning test of a self-supervised method: ``build(backbone)`` trained on 1,024 ``shapes`` scenes
    at 16 px for 96 steps, in fp32. Returns the attribute linear probes of the backbone before and after.
    (A kNN on these features gained half as much, 0.07-0.13 over the three, too close to a line.)"""
    train, test = load("shapes", "train", n=1024, image_size=16), load("shapes", "test", n=500, image_size=16)
    torch.manual_seed(0)
    backbone = build_backbone("convnet-s", 3, 16)
    before = probes(backbone, train, test, names)
    model = build(backbone)
    fit(model, train, epochs=6, batch_size=64, lr=3e-3, warmup_epochs=0.5, device="cpu", precision="fp32",
        progress=False)
    return before, probes(model.backbone, train, test, names)


def one_training_step(model: Method, data: ImageSet, batch_size: int = 4) -> None:
    """One forward, backward and ``after_step`` of a method on a batch of ``data`` (the engine's batch dict):
    a finite loss and a gradient in every backbone weight show that a preset's sizes fit together."""
    loss = model(next(batches(data, batch_size)))["loss"]
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    model.after_step(0, total_steps=10)
    assert math.isfinite(loss.item())
