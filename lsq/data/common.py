"""What every data path shares: the loader protocol, the bundle build_data returns, and the
seeded order, sharding and subsets (docs in :mod:`lsq.data`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch

from lsq.errors import ConfigError

# Seeds of the things that must NOT change with the run seed. 190208153 is the paper's arXiv id.
SUBSET_SEED = 190208153
SYNTHETIC_SEED = 190208153 + 1
# Stream tags keep the generators of one (seed, epoch) apart.
ORDER, AUGMENT, SUBSET = 0, 1, 2


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

def derive_seed(*parts: int) -> int:
    """A 63-bit seed hashed from integers, so neighbouring (seed, epoch) give unrelated streams.

    ``seed + epoch`` (DistributedSampler's choice) would replay seed 1's epoch 0 as seed 0's
    epoch 1; SeedSequence mixes its inputs instead.
    """
    words = [part % 2**64 for part in parts]  # SeedSequence takes non-negative integers only
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))

def shard_epoch(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Indices rank ``rank`` visits in ``epoch``: DistributedSampler(drop_last=True) semantics."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, ORDER)))
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
    generator = torch.Generator().manual_seed(derive_seed(SUBSET_SEED, n, SUBSET))
    # Sorted, so the test order (and ImageFolder disk locality) follows the original order.
    return torch.randperm(n, generator=generator)[:subset].sort().values
