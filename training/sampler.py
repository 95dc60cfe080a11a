"""Batch samplers: class-balanced P x K batches (for the metric loss) and plain shuffling, DDP-aware.

Every rank builds the same seeded global list of batches for an epoch and takes every
``world``-th batch, so ranks never see the same images in one step.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator, Sequence

from edge_app.errors import UsageError


class BatchSampler:
    """``pk``: P classes x K images per batch; ``random``: a seeded shuffle. Drops the ragged last batch."""

    def __init__(self, labels: Sequence[int], batch_size: int, *, mode: str = "pk", k: int = 4, seed: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        if mode not in ("pk", "random"):
            raise UsageError(f"sampler must be 'pk' or 'random', got {mode!r}")
        if batch_size < 2:
            raise UsageError(f"batch size must be >= 2, got {batch_size}")
        if mode == "pk" and batch_size % k:
            raise UsageError(f"pk sampler: batch size {batch_size} is not a multiple of K={k}")
        self.labels, self.batch_size, self.mode, self.k = list(labels), batch_size, mode, k
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        n_batches = len(self.labels) // (batch_size * world)
        if n_batches < 1:
            raise UsageError(f"{len(self.labels)} training images are fewer than one batch of "
                             f"{batch_size} x {world} process(es)")
        self.n_batches = n_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def _global_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        total = self.n_batches * self.world
        if self.mode == "random":
            idx = list(range(len(self.labels)))
            rng.shuffle(idx)
            return [idx[b * self.batch_size:(b + 1) * self.batch_size] for b in range(total)]
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, y in enumerate(self.labels):
            by_class[y].append(i)
        pools = {c: [] for c in by_class}
        classes = sorted(by_class)
        p = self.batch_size // self.k
        batches = []
        for _ in range(total):
            chosen = rng.sample(classes, min(p, len(classes)))
            batch: list[int] = []
            for c in chosen:
                for _ in range(self.k):
                    if not pools[c]:
                        pools[c] = list(by_class[c])
                        rng.shuffle(pools[c])
                    batch.append(pools[c].pop())
            while len(batch) < self.batch_size:  # fewer classes than P: fill at random
                batch.append(rng.randrange(len(self.labels)))
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._global_batches()[self.rank::self.world]
