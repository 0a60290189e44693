"""ImageNet: torchvision ImageFolder, decoded by worker processes, each image's augmentation
seeded from (seed, epoch, image index)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from lsq.config import DataConfig
from lsq.errors import DataError, DatasetNotFoundError
from lsq.data.common import AUGMENT, DataBundle, derive_seed, shard_epoch, shard_test, subset_indices

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
            torch.manual_seed(derive_seed(self.seed, epoch, index, AUGMENT))
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
            generator=torch.Generator().manual_seed(derive_seed(seed, rank, AUGMENT)),
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
