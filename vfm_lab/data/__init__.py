"""Data sets as in-memory tensors, and the batches the engine iterates over.

Every data set, procedural or real, is an :class:`ImageSet`: uint8 images
``(N, C, H, W)``, integer class labels, and optional per-image annotations
(attributes, captions, boxes, masks, question-answer pairs). Small data sets fit in
memory, so batching is plain tensor indexing: no worker processes, deterministic
order from ``(seed, epoch)``, sharded per rank under DDP.

>>> ds = load("shapes", "train", n=64, image_size=32)
>>> ds.images.shape, ds.images.dtype, len(ds.classes) > 1
(torch.Size([64, 3, 32, 32]), torch.uint8, True)
>>> b = next(iter(batches(ds, batch_size=16, seed=0)))
>>> b["image"].shape, b["image"].dtype, float(b["image"].max()) <= 1.0
(torch.Size([16, 3, 32, 32]), torch.float32, True)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from vfm_lab.errors import LabError

DATASET_NAMES = ("shapes", "digits", "mnist5k", "fashion-mnist", "cifar10", "imagefolder",
                 "emoji", "openmoji", "openclipart", "icon-scenes")
SPLITS = ("train", "test")


class DataMissingError(LabError, FileNotFoundError):
    """A data set that is not on this machine; the message names the command that fetches it."""


class DataError(LabError, ValueError):
    """A data file that is corrupt or incomplete, or an image folder with nothing to read."""


@dataclass
class ImageSet:
    """A labelled image data set held in memory.

    images: (N, C, H, W) uint8; labels: (N,) int64 indices into ``classes``.
    attributes: name -> (N,) int64 (for example shape, colour, size, position, count on
    ``shapes``), with the value names of each in ``attribute_values``.
    captions: one string per image, where the data set has text.
    extras: anything else per image, as tensors with N first (boxes, masks, ...) or lists of length N.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    attribute_values: dict[str, list[str]] = field(default_factory=dict)
    captions: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if len(self.labels) != n:
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"ImageSet({self.name!r}: {len(self)} images {c}x{h}x{w}, {self.num_classes} classes, "
                f"attributes {sorted(self.attributes)}, captions {'yes' if self.captions else 'no'}, "
                f"extras {sorted(self.extras)})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def subset(self, index: torch.Tensor | slice) -> "ImageSet":
        """The images at ``index`` with all their annotations."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        idx = index.tolist()
        return dataclasses.replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            attributes={k: v[index] for k, v in self.attributes.items()},
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            extras={k: v[index] if torch.is_tensor(v) else [v[i] for i in idx] for k, v in self.extras.items()},
        )


def load(name: str, split: str = "train", **kwargs: Any) -> ImageSet:
    """Load a data set by name. Keyword arguments go to its loader (for example
    ``n``, ``image_size`` and ``seed`` for ``shapes``; ``root`` for file-based sets)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}")
    import functools

    from vfm_lab.data import icon_scenes, icons, real, shapes

    loaders = {"shapes": shapes.load, "digits": real.load_digits, "mnist5k": real.load_mnist5k,
               "fashion-mnist": real.load_fashion_mnist, "cifar10": real.load_cifar10,
               "imagefolder": real.load_imagefolder, "icon-scenes": icon_scenes.load,
               **{icon_set: functools.partial(icons.load, icon_set) for icon_set in icons.ICON_SETS}}
    if name not in loaders:
        raise ValueError(f"dataset={name!r} is not a data set; choose one of {', '.join(DATASET_NAMES)}")
    return loaders[name](split=split, **kwargs)


def batches(data: ImageSet, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
            drop_last: bool = True, rank: int = 0, world_size: int = 1, start: int = 0,
            device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches of one epoch as dicts: ``image`` (B, C, H, W) float in [0, 1] on
    ``device``, ``label`` (B,), every attribute (B,), and ``index`` (B,) into ``data``.

    The order depends only on ``(seed, epoch)``, so a resumed run sees the same
    batches; ``start`` skips the first batches of the epoch. Under DDP each rank takes
    every ``world_size``-th batch-sized slice of the same permutation, so ``batch_size``
    is per rank.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    global_batch = batch_size * world_size
    if drop_last and global_batch > len(data):
        raise ValueError(f"batch_size={batch_size} x {world_size} rank(s) is larger than the "
                         f"{len(data)} images of {data.name}; use a batch size of at most {len(data) // world_size}")
    if shuffle:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(len(data))
    n_batches = len(data) // global_batch if drop_last else math.ceil(len(data) / global_batch)
    for b in range(start, n_batches):
        index = order[b * global_batch:(b + 1) * global_batch][rank::world_size]
        if len(index) == 0:
            continue
        batch = {"image": data.images[index].to(device, non_blocking=True).float().div_(255),
                 "label": data.labels[index].to(device), "index": index}
        for k, v in data.attributes.items():
            batch[k] = v[index].to(device)
        yield batch


def steps_per_epoch(data: ImageSet, batch_size: int, world_size: int = 1) -> int:
    """Optimizer-visible batches per epoch with ``drop_last`` (what :func:`batches` yields)."""
    return len(data) // (batch_size * world_size)
