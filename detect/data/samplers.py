"""Samplers for training by iterations: an endless, seeded, shardable index stream, and batches
grouped by aspect ratio (landscape with landscape) so padding to the batch's largest image wastes
little. Grouping works on top of any index sampler, the distributed one included."""
from __future__ import annotations

from typing import Iterator, List, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices, the same stream for the same seed.

    With ``world_size > 1`` each rank takes every ``world_size``-th index of the shared stream, so
    the ranks see disjoint images and together the same order a single process would.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        position = 0
        while True:
            order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            for index in order.tolist():
                if position % self.world_size == self.rank:
                    yield index
                position += 1


def aspect_ratio_groups(aspect_ratios: Sequence[float]) -> List[int]:
    """Group id per image: 0 for landscape or square (w >= h), 1 for portrait."""
    return [0 if ratio >= 1.0 else 1 for ratio in aspect_ratios]


class GroupedBatchSampler(BatchSampler):
    """Batches of ``batch_size`` indices from ``sampler`` whose images share a group id.

    Indices wait in their group's buffer until it holds a full batch, so the order of the
    underlying sampler is kept within each group. With a finite sampler the leftovers of all
    groups are emitted at the end, mixed, so every index is used exactly once.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[List[int]]:
        buffers = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()
        leftovers = [i for buffer in buffers.values() for i in buffer]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        # full batches F and leftovers L satisfy F * batch_size + L = n, so this is exact.
        return -(-len(self.sampler) // self.batch_size)  # type: ignore[arg-type]
