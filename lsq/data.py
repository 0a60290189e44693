"""Datasets -> (train, test) loaders: CIFAR-10, Fashion-MNIST, ImageNet and synthetic data.

``build_data(dataset, data_config, batch_size=..., eval_batch_size=..., device=..., seed=...)``
returns a :class:`DataBundle` whose ``train`` and ``test`` loaders yield ``(images, labels)``
already on the device: images float32 ``(N, C, H, W)`` normalised with the dataset's mean/std,
labels int64.

Loader protocol (both loaders): ``len(loader)`` is the number of batches per epoch and
``loader.set_epoch(epoch)`` comes before iterating an epoch. The order and augmentation of epoch
``e`` are a pure function of ``(seed, e)`` and of ``(rank, world_size)`` for the sharding, drawn
from CPU ``torch.Generator`` s seeded from them: a run killed and resumed replays the same
batches, so checkpoints store nothing about the data. Augmentation is tied to (seed, epoch,
image), not to the rank, so a 2-rank run sees exactly the augmented images a 1-rank run sees,
split in two.

* Train: every epoch is one permutation of the (subset of the) training set, shared by all
  ranks; as in ``DistributedSampler(drop_last=True)`` it is cut to ``(n // world_size) *
  world_size`` images and rank ``r`` takes positions ``r, r + world_size, ...``; each rank then
  drops its last incomplete batch.
* Test: no augmentation, fixed order, no padding or duplicates: rank ``r`` evaluates images
  ``r, r + world_size, ...``, so every test image is seen exactly once per set of ranks and the
  trainer sums correct counts over ranks and divides by ``num_test``.
* Subsets (``DataConfig.train_subset`` / ``test_subset``): the first N of a permutation seeded
  with a constant (not the run seed), so all seeds and rows of a dataset use the same images.
  None, or N at least the split's size, means the whole split.

Where the data is read (``--data-dir``, default :func:`default_data_dir`):

* ``cifar10``: torchvision's format, ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,
  test_batch}`` (``--download`` fetches it with torchvision where the internet is reachable).
  Loaded once into uint8 tensors kept on the training device; augmentation (random crop with
  4-pixel zero padding + horizontal flip) and normalisation run as batched tensor ops there.
* ``fashion-mnist``: the idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in
  ``<data_dir>`` itself (the Debian package ``dataset-fashion-mnist`` installs them under
  ``/usr/share/datasets/fashion-mnist``, the default fallback) or in torchvision's
  ``<data_dir>/FashionMNIST/raw/``. 28x28x1 through the same batched path as CIFAR-10, with the
  same pad-4 crop + flip (clothes are left/right symmetric enough for the flip to be an honest
  augmentation; pad 4 on 28 pixels shifts by up to 14%, as on CIFAR's 32).
* ``imagenet``: ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG``, read with
  ``torchvision.datasets.ImageFolder``. The val images must sit in class subfolders named like
  the train ones: the official val tarball is flat, so sort it first (the usual ``valprep.sh``
  from the PyTorch ImageNet example does it). Point at the folder holding ``train/`` and ``val/``
  with ``--data-dir /path/to/imagenet`` or ``LSQ_DATA_DIR=/path/to`` (then ``imagenet/`` below it).
  Standard transforms (train: RandomResizedCrop 224 + flip; val: Resize 256 + CenterCrop 224),
  decoded by ``DataConfig.workers`` worker processes. Each image's augmentation is seeded from
  (seed, epoch, image index) inside the worker, so it does not depend on the worker count either.
* ``synthetic``: generated, CIFAR-shaped (50,000 train / 10,000 test), every image a fixed
  low-frequency class template plus noise, stored as uint8 so it takes CIFAR-10's exact
  augmentation and normalisation path. Learnable, but only for smoke runs and timing:
  ``data_kind == "synthetic"`` marks everything made from it.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from torch.nn import functional as F

from lsq.config import DataConfig
from lsq.errors import ConfigError, DataError, DatasetNotFoundError
from lsq.experiments import DATASETS, TABLES


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP_PADDING = 4
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Seeds of the things that must NOT change with the run seed. 190208153 is the paper's arXiv id.
SUBSET_SEED = 190208153
SYNTHETIC_SEED = 190208153 + 1
# Stream tags keep the generators of one (seed, epoch) apart.
_ORDER, _AUGMENT, _SUBSET = 0, 1, 2


class Loader(Protocol):
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class DataBundle:
    train: Loader  # this rank's share: len(train) full batches per epoch
    test: Loader  # this rank's share of the test set, fixed order, no augmentation
    num_train: int  # images after subsetting, all ranks together
    num_test: int
    data_kind: str  # "real" | "synthetic"
    num_classes: int
    in_channels: int
    source: str = ""  # where the images came from: a directory, or "generated"


# --- seeding and sharding: shared by the tensor and the ImageFolder paths ---------------------


def derive_seed(*parts: int) -> int:
    """A 63-bit seed hashed from integers, so neighbouring (seed, epoch) give unrelated streams.

    ``seed + epoch`` (DistributedSampler's choice) would replay seed 1's epoch 0 as seed 0's
    epoch 1; SeedSequence mixes its inputs instead.
    """
    words = [part % 2**64 for part in parts]  # SeedSequence takes non-negative integers only
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def shard_epoch(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Indices rank ``rank`` visits in ``epoch``: DistributedSampler(drop_last=True) semantics."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, _ORDER)))
    per_rank = n // world_size
    return order[: per_rank * world_size][rank::world_size]


def shard_test(n: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Every test image exactly once over the ranks; rank r takes r, r + world_size, ...

    A rank past the last image gets none (``torch.arange`` rejects start > end, hence min).
    """
    return torch.arange(min(rank, n), n, world_size)


def subset_indices(n: int, subset: int | None) -> torch.Tensor | None:
    """The first ``subset`` of a constant-seeded permutation of ``range(n)``, sorted; None = all."""
    if subset is None or subset >= n:
        return None
    if subset < 1:
        raise ConfigError(f"a data subset must hold at least one image, got {subset}")
    generator = torch.Generator().manual_seed(derive_seed(SUBSET_SEED, n, _SUBSET))
    # Sorted, so the test order (and ImageFolder disk locality) follows the original order.
    return torch.randperm(n, generator=generator)[:subset].sort().values


# --- the batched tensor path (CIFAR-10, Fashion-MNIST, synthetic) ------------------------------


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              padding: int) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch, then horizontal flip, as one gather.

    ``images`` (B, C, H, W); window ``b`` starts at ``(dy[b], dx[b])`` of the image padded by
    ``padding`` on every side, and is mirrored left-right where ``flip[b]``.
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4)
    rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
    columns = torch.arange(w, device=device)
    # Flipping the cropped window is reading its columns backwards.
    columns = torch.where(flip[:, None], w - 1 - columns, columns) + dx[:, None]  # (B, W)
    return padded[
        torch.arange(b, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


AUGMENT_CHUNK_BATCHES = 32  # CIFAR at batch 128: a 50 MB float chunk


class TensorLoader:
    """Batches from a uint8 image tensor held on the device; no per-image Python.

    ``train=True``: shuffled, DistributedSampler-style shards, pad-``padding`` random crop + flip,
    incomplete last batch dropped. ``train=False``: fixed order, every image once, last batch
    may be short.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, mean: tuple[float, ...],
                 std: tuple[float, ...], batch_size: int, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, padding: int = CROP_PADDING):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.mean, self.std = mean, std
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size, self.padding = rank, world_size, padding
        std_ = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        mean_ = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add on the uint8 values.
        self._scale, self._shift = 1.0 / (255.0 * std_), -mean_ / std_
        self._epoch: int | None = None

    @property
    def num_samples(self) -> int:
        """Images this rank visits per epoch (after sharding, before dropping the last batch)."""
        n = len(self.images)
        return n // self.world_size if self.train else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mul_(self._scale).add_(self._shift)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.images.device
        if not self.train:
            indices = shard_test(len(self.images), self.rank, self.world_size).to(device)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                yield self.normalize(self.images[batch]), self.labels[batch]
            return
        if self._epoch is None:
            raise RuntimeError("call set_epoch(epoch) before iterating a train loader")
        indices = shard_epoch(len(self.images), self.seed, self._epoch, self.rank, self.world_size)
        indices = indices[: len(self) * self.batch_size]
        # Crop offsets and flips are drawn for the whole split and indexed by image, so an
        # image's augmentation depends on (seed, epoch, image) only, not on the sharding.
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self._epoch, _AUGMENT))
        n = len(self.images)
        offsets = torch.randint(0, 2 * self.padding + 1, (2, n), generator=generator)[:, indices]
        flips = (torch.rand(n, generator=generator) < 0.5)[indices]
        # One host-to-device copy per epoch instead of four small ones per batch.
        indices, offsets, flips = indices.to(device), offsets.to(device), flips.to(device)
        # Augment and normalise AUGMENT_CHUNK_BATCHES batches per gather: a batch is then a slice
        # (no kernel launch), which matters when a training step is one CUDA-graph replay.
        chunk = self.batch_size * AUGMENT_CHUNK_BATCHES
        for chunk_start in range(0, len(indices), chunk):
            part = slice(chunk_start, chunk_start + chunk)
            batch = indices[part]
            images = self.normalize(crop_flip(self.images[batch], offsets[0, part], offsets[1, part],
                                              flips[part], self.padding))
            labels = self.labels[batch]
            for start in range(0, len(batch), self.batch_size):
                yield images[start:start + self.batch_size], labels[start:start + self.batch_size]


# --- dataset readers -------------------------------------------------------------------------


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
            f"data_batch_1..5 and test_batch (missing {', '.join(missing)}); get it with --download "
            "on a machine where the internet is reachable, or copy an extracted "
            "cifar-10-batches-py folder there (or point --data-dir at its parent)"
        )

    def load(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as handle:
                # latin1, as torchvision: the official pickles come from Python 2.
                entry = pickle.load(handle, encoding="latin1")
            entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
            data = np.asarray(entry["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(f"{folder / name}: expected data of shape (N, 3072), got {data.shape}")
            images.append(data.reshape(-1, 3, 32, 32))  # stored channel-major: R plane, G, B
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    return load(names[:5]), load(names[5:]), folder


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


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gz or not): big-endian magic ``0x00 0x00 <type> <ndim>``, sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if raw[:3] != b"\x00\x00\x08":  # 0x08 = unsigned byte, the only type MNIST files use
        raise DataError(f"{path}: not an unsigned-byte idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path}: header says {shape}, file holds {data.size} values")
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
            "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; get it with "
            "'apt-get install dataset-fashion-mnist' (installs to /usr/share/datasets/fashion-mnist, "
            "used by default), or --download where the internet is reachable"
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


# --- ImageNet: ImageFolder + worker processes ---------------------------------------------------


class _EpochSampler(torch.utils.data.Sampler):
    """Yields ``(index, epoch)``: the train shard of :func:`shard_epoch`, or the test shard.

    The epoch travels with every index so that worker processes (persistent ones included)
    seed each image's augmentation from it without sharing state with the main process.
    """

    def __init__(self, n: int, *, train: bool, seed: int, rank: int, world_size: int):
        self.n, self.train, self.seed, self.rank, self.world_size = n, train, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        if self.train:
            return shard_epoch(self.n, self.seed, self.epoch, self.rank, self.world_size)
        return shard_test(self.n, self.rank, self.world_size)

    def __iter__(self):
        epoch = self.epoch
        return ((index, epoch) for index in self._indices().tolist())

    def __len__(self) -> int:
        return self.n // self.world_size if self.train else len(range(self.rank, self.n, self.world_size))


class _SeededFolder(torch.utils.data.Dataset):
    """An ImageFolder (subset) whose transform is seeded per (seed, epoch, image)."""

    def __init__(self, folder, indices: list[int] | None, transform, seed: int):
        self.folder, self.transform, self.seed = folder, transform, seed
        self.indices = list(range(len(folder))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]):
        position, epoch = key
        index = self.indices[position]
        path, target = self.folder.samples[index]
        image = self.folder.loader(path)
        # torchvision's transforms draw from the global RNG; fork it so that the main process's
        # stream (workers=0) is left as it was and the draw depends on the image alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, index, _AUGMENT))
            return self.transform(image), target


class FolderLoader:
    """A worker-process DataLoader that satisfies the Loader protocol and moves batches to device."""

    def __init__(self, dataset: _SeededFolder, *, batch_size: int, train: bool, seed: int,
                 rank: int, world_size: int, workers: int, device: torch.device):
        self.device = device
        self.sampler = _EpochSampler(len(dataset), train=train, seed=seed, rank=rank, world_size=world_size)
        # The DataLoader draws its workers' base seed from ``generator`` (the global RNG without
        # one): a private generator keeps the trainer's RNG stream untouched. The transforms do
        # not use that base seed anyway (see _SeededFolder).
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            pin_memory=device.type == "cuda", drop_last=train, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(derive_seed(seed, rank, _AUGMENT)),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def _imagenet_folders(data_dir: Path):
    from torchvision.datasets import ImageFolder

    layout = ("train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted into class folders, e.g. with "
              "the usual valprep.sh); point --data-dir at the folder holding train/ and val/")
    splits = {}
    for split in ("train", "val"):
        root = data_dir / split
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"ImageNet not found: expected {root.resolve()}/; the layout is {layout}")
        try:
            splits[split] = ImageFolder(str(root))
        except FileNotFoundError as exc:  # flat val/ or empty class folders
            raise DatasetNotFoundError(
                f"ImageNet at {root.resolve()}: {exc}; the layout is {layout}") from exc
    if splits["train"].classes != splits["val"].classes:
        raise DataError(
            f"ImageNet train/ has {len(splits['train'].classes)} class folders and val/ has "
            f"{len(splits['val'].classes)}, or their names differ; they must match"
        )
    return splits["train"], splits["val"]


def _build_imagenet(data_dir: Path, data: DataConfig, *, batch_size: int, eval_batch_size: int,
                    device: torch.device, seed: int, rank: int, world_size: int) -> DataBundle:
    from torchvision import transforms

    train_folder, val_folder = _imagenet_folders(data_dir)
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_transform = transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), normalize,
    ])
    val_transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize,
    ])
    parts = []
    for folder, subset, transform in ((train_folder, data.train_subset, train_transform),
                                      (val_folder, data.test_subset, val_transform)):
        indices = subset_indices(len(folder), subset)
        parts.append(_SeededFolder(folder, None if indices is None else indices.tolist(), transform, seed))
    common = dict(seed=seed, rank=rank, world_size=world_size, workers=data.workers, device=device)
    return DataBundle(
        train=FolderLoader(parts[0], batch_size=batch_size, train=True, **common),
        test=FolderLoader(parts[1], batch_size=eval_batch_size, train=False, **common),
        num_train=len(parts[0]), num_test=len(parts[1]), data_kind="real",
        num_classes=len(train_folder.classes), in_channels=3, source=str(data_dir),
    )


# --- entry point -----------------------------------------------------------------------------


def _take(images: torch.Tensor, labels: torch.Tensor, subset: int | None):
    indices = subset_indices(len(images), subset)
    if indices is None:
        return images, labels
    return images[indices], labels[indices]


def build_data(dataset: str, data: DataConfig, *, batch_size: int, eval_batch_size: int,
               device: torch.device, seed: int, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Train and test loaders of ``dataset`` for this rank, batches already on ``device``."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    device = torch.device(device)
    data_dir = Path(data.data_dir) if data.data_dir else default_data_dir(dataset)
    if dataset == "imagenet":
        bundle = _build_imagenet(data_dir, data, batch_size=batch_size, eval_batch_size=eval_batch_size,
                                 device=device, seed=seed, rank=rank, world_size=world_size)
    else:
        if dataset == "cifar10":
            train, test, folder = _read_cifar10(data_dir, data.download)
            train, test = _take(*train, data.train_subset), _take(*test, data.test_subset)
            mean, std, source = CIFAR10_MEAN, CIFAR10_STD, str(folder)
        elif dataset == "fashion-mnist":
            train, test, folder = _read_fashion_mnist(data_dir, data.download)
            train, test = _take(*train, data.train_subset), _take(*test, data.test_subset)
            mean, std, source = FASHION_MNIST_MEAN, FASHION_MNIST_STD, str(folder)
        else:  # synthetic: generate only the images the subsets need
            counts = {split: min(size, subset or size) for (split, size), subset in
                      zip(SYNTHETIC_SIZES.items(), (data.train_subset, data.test_subset))}
            train, test = synthetic_split("train", counts["train"]), synthetic_split("test", counts["test"])
            mean, std, source = CIFAR10_MEAN, CIFAR10_STD, "generated"
        table = TABLES[dataset]
        # uint8 on the device once: 150 MB for all of CIFAR-10's train set, 4x less than float.
        loaders = [
            TensorLoader(images.to(device).contiguous(), labels.to(device), mean=mean, std=std,
                         batch_size=size, train=is_train, seed=seed, rank=rank, world_size=world_size)
            for (images, labels), size, is_train in ((train, batch_size, True),
                                                     (test, eval_batch_size, False))
        ]
        bundle = DataBundle(
            train=loaders[0], test=loaders[1], num_train=len(train[0]), num_test=len(test[0]),
            data_kind=table.data_kind, num_classes=table.num_classes, in_channels=table.in_channels,
            source=source,
        )
    if len(bundle.train) == 0:
        raise ConfigError(
            f"{dataset}: {bundle.num_train} training images over {world_size} rank(s) make no full "
            f"batch of {batch_size}; lower the batch size or raise the train subset"
        )
    return bundle
