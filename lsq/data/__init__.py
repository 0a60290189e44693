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

from pathlib import Path

import torch

from lsq.config import DataConfig
from lsq.errors import ConfigError
from lsq.experiments import DATASETS, TABLES
from lsq.data.common import (  # noqa: F401 - the package's API
    SUBSET_SEED, SYNTHETIC_SEED, DataBundle, Loader, derive_seed, shard_epoch, shard_test, subset_indices,
)
from lsq.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, FolderLoader, _build_imagenet  # noqa: F401
from lsq.data.readers import (  # noqa: F401
    CIFAR10_MEAN, CIFAR10_STD, DEBIAN_FASHION_MNIST, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
    SYNTHETIC_SIZES, _read_cifar10, _read_fashion_mnist, default_data_dir, read_idx, synthetic_split,
    synthetic_templates,
)
from lsq.data.tensors import CROP_PADDING, TensorLoader, crop_flip  # noqa: F401


def _take(images: torch.Tensor, labels: torch.Tensor, subset: int | None):
    indices = subset_indices(len(images), subset)
    if indices is None:
        return images, labels
    return images[indices], labels[indices]

def build_data(dataset: str, data: DataConfig, *, batch_size: int, eval_batch_size: int,
               device: torch.device, seed: int, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Train and test loaders of ``dataset`` for this rank, batches already on ``device``."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    dataset = TABLES[dataset].data_name  # the paper's tables train on the seed tables' data
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
            counts = {split: size if subset is None else min(size, subset) for (split, size), subset in
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
