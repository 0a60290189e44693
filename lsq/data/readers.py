"""Dataset readers for the tensor path: CIFAR-10 (torchvision's pickles), Fashion-MNIST (idx
files) and the synthetic CIFAR-shaped data."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from lsq.errors import DataError, DatasetNotFoundError
from lsq.data.common import SYNTHETIC_SEED, derive_seed

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def default_data_dir(dataset: str) -> Path:
    """``$LSQ_DATA_DIR/<dataset>`` if set, else ``data/<dataset>``.

    Fashion-MNIST falls back to the Debian package's directory when the default holds none of
    its files, so it trains out of the box wherever ``dataset-fashion-mnist`` is installed.
    """
    root = os.environ.get("LSQ_DATA_DIR")
    path = (Path(root) if root else Path("data")) / dataset
    if dataset == "fashion-mnist" and _find_fashion_mnist(path) is None \
            and _find_fashion_mnist(DEBIAN_FASHION_MNIST) is not None:
        return DEBIAN_FASHION_MNIST
    return path

def _read_cifar10(data_dir: Path, download: bool):
    folder = data_dir / "cifar-10-batches-py"
    if not folder.is_dir() and (data_dir / "data_batch_1").is_file():
        folder = data_dir  # pointed at cifar-10-batches-py itself
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not all((folder / name).is_file() for name in names) and download:
        import torchvision

        try:
            torchvision.datasets.CIFAR10(str(data_dir), train=True, download=True)
        except Exception as exc:  # no network, disk full, ...: one line that says what failed
            raise DatasetNotFoundError(f"CIFAR-10 download into {data_dir.resolve()} failed: {exc}") from exc
        folder = data_dir / "cifar-10-batches-py"
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: expected {(data_dir / 'cifar-10-batches-py').resolve()}/ with "
            f"data_batch_1..5 and test_batch (missing {', '.join(missing)}); {_GET_CIFAR10} (or "
            "point --data-dir at its parent)"
        )

    def load(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            path = folder / name
            try:
                with open(path, "rb") as handle:
                    # latin1, as torchvision: the official pickles come from Python 2.
                    entry = pickle.load(handle, encoding="latin1")
                entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
                data, labels_ = entry["data"], entry["labels"]
            except (EOFError, pickle.UnpicklingError, ValueError, AttributeError, KeyError,
                    TypeError) as error:
                raise DataError(
                    f"{path} is truncated or not a CIFAR-10 batch ({type(error).__name__}: "
                    f"{error}); delete it and {_GET_CIFAR10}") from None
            data = np.asarray(data, dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(f"{folder / name}: expected data of shape (N, 3072), got {data.shape}")
            images.append(data.reshape(-1, 3, 32, 32))  # stored channel-major: R plane, G, B
            labels.append(np.asarray(labels_, dtype=np.int64))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    return load(names[:5]), load(names[5:]), folder

_GET_CIFAR10 = ("get it with --download on a machine where the internet is reachable, or copy an "
                "extracted cifar-10-batches-py folder there")
_GET_FASHION_MNIST = ("get it with 'apt-get install dataset-fashion-mnist' (installs to "
                      "/usr/share/datasets/fashion-mnist, used by default; --reinstall replaces a "
                      "damaged copy), or --download where the internet is reachable")

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

def _find_fashion_mnist(data_dir: Path) -> Path | None:
    """The folder holding the four idx files (gz or not): data_dir, or torchvision's raw/."""
    for folder in (data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "raw"):
        names = [name for pair in _FASHION_FILES.values() for name in pair]
        if all((folder / name).is_file() or (folder / f"{name}.gz").is_file() for name in names):
            return folder
    return None

def read_idx(path: Path, get_it: str = _GET_FASHION_MNIST) -> np.ndarray:
    """An idx file (gz or not): big-endian magic ``0x00 0x00 <type> <ndim>``, sizes, data.

    A file that is not one raises :class:`DataError` naming it and, in ``get_it``, how to get it
    again (the only idx files read here are Fashion-MNIST's).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # cut short, or not gzip at all
        raise DataError(f"{path} is truncated or not gzip data ({type(error).__name__}: {error}); "
                        f"delete it and {get_it}") from None
    if raw[:3] != b"\x00\x00\x08" or len(raw) < 4 + 4 * raw[3]:  # 0x08: unsigned byte, MNIST's type
        raise DataError(f"{path}: not an unsigned-byte idx file (starts {raw[:4].hex() or 'empty'}); "
                        f"delete it and {get_it}")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path}: header says {shape}, file holds {data.size} values (truncated?); "
                        f"delete it and {get_it}")
    return data.reshape(shape)

def _read_fashion_mnist(data_dir: Path, download: bool):
    folder = _find_fashion_mnist(data_dir)
    if folder is None and download:
        import torchvision

        try:
            torchvision.datasets.FashionMNIST(str(data_dir), train=True, download=True)
        except Exception as exc:
            raise DatasetNotFoundError(
                f"Fashion-MNIST download into {data_dir.resolve()} failed: {exc}") from exc
        folder = _find_fashion_mnist(data_dir)
    if folder is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: expected {data_dir.resolve()}/ (or its FashionMNIST/raw/) to hold "
            f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]; {_GET_FASHION_MNIST}"
        )

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = []
        for name in _FASHION_FILES[split]:
            path = folder / name
            arrays.append(read_idx(path if path.is_file() else folder / f"{name}.gz"))
        images, labels = arrays
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    return load("train"), load("test"), folder

SYNTHETIC_SIZES = {"train": 50_000, "test": 10_000}

_SYNTHETIC_CHUNK = 1000

def synthetic_templates(num_classes: int = 10) -> torch.Tensor:
    """One smooth random pattern per class, (classes, 3, 32, 32), values around 0 (std ~1)."""
    generator = torch.Generator().manual_seed(derive_seed(SYNTHETIC_SEED, 0))
    coarse = torch.randn(num_classes, 3, 4, 4, generator=generator)
    # Low-frequency on purpose: a 4-pixel crop shift must not destroy the class signal.
    templates = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    return templates / templates.std()

def synthetic_split(split: str, count: int, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` images of a synthetic split, as uint8 (count, 3, 32, 32) and labels.

    Images are generated in chunks of fixed seeds, so image i is the same whatever ``count``
    asks for, and only the chunks covering ``count`` are made. The images are independent draws,
    so the first N of them serve as the subset (the subset permutation would add nothing).
    Label of image i is ``i % num_classes``: every prefix is class-balanced.
    """
    templates = synthetic_templates(num_classes)
    split_id = list(SYNTHETIC_SIZES).index(split) + 1
    images = []
    for chunk in range(math.ceil(count / _SYNTHETIC_CHUNK)):
        generator = torch.Generator().manual_seed(derive_seed(SYNTHETIC_SEED, split_id, chunk))
        labels = torch.arange(chunk * _SYNTHETIC_CHUNK, (chunk + 1) * _SYNTHETIC_CHUNK) % num_classes
        noise = torch.randn(_SYNTHETIC_CHUNK, 3, 32, 32, generator=generator)
        # Template amplitude 40 grey levels against noise of 48: each pixel alone is a poor
        # guess of the class, the image as a whole a good one, so a network has something to learn.
        values = 128.0 + 40.0 * templates[labels] + 48.0 * noise
        images.append(values.round_().clamp_(0, 255).to(torch.uint8))
    images = torch.cat(images)[:count] if images else torch.empty(0, 3, 32, 32, dtype=torch.uint8)
    return images, torch.arange(count) % num_classes
