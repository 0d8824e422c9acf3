"""Index batches for a DataLoader that fetches whole batches: shuffled per epoch from the seed
and the epoch number alone, so that a run resumed at epoch e sees the batches an
uninterrupted run would have seen (Lightning calls `set_epoch` at every epoch's start)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler


class EpochBatches(Sampler[Tensor]):
    """Batches of indices into `n` items, `batch_size` each (the last one may be short).

    Args:
        n: number of items.
        batch_size: indices per batch.
        shuffle: a fresh permutation every epoch, drawn from (seed, epoch); else in order.
        seed: seeds the permutations.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            # Distinct streams per (seed, epoch): epochs stay below the multiplier.
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        yield from order.split(self.batch_size)


def batch_loader(data, batch_size: int, shuffle: bool, seed: int = 0, **kwargs) -> DataLoader:
    """A DataLoader over `data`, which is indexed with a whole batch of indices at once."""
    sampler = EpochBatches(len(data), batch_size, shuffle, seed)
    return DataLoader(data, sampler=sampler, batch_size=None, **kwargs)
