"""The batched tensor path (CIFAR-10, Fashion-MNIST, synthetic): uint8 images on the device,
augmented and normalised by batched tensor ops."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.nn import functional as F

from lsq.data.common import AUGMENT, derive_seed, shard_epoch, shard_test

CROP_PADDING = 4


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
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self._epoch, AUGMENT))
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
