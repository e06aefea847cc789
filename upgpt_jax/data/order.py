"""Which record each host reads when: the input pipeline's order, as plain picklable arithmetic.

Epoch `e` visits the records in the permutation drawn by `np.random.default_rng([seed, e])` (or in
storage order without shuffling). The permutation is cut into global batches of
`global_batch_size` (the tail that does not fill one is dropped); within global batch `b`, host
`p` of `P` reads the `p`-th contiguous slice of `global_batch_size / P` indices. So the hosts read
disjoint slices, and the global batch is the same whatever the number of hosts.

This is numpy's permutation rather than grain's `MapDataset.shuffle` (another permutation) so that
the order, and with it every run and checkpoint saved before the pipeline moved onto grain, stays
the same. `HostOrder` is what the grain dataset maps over (upgpt_jax.data.pipeline), in the main
process or pickled into its worker processes.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np


def epoch_order(num_records: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The record indices epoch `epoch` visits, in order (all hosts compute the same one)."""
    if not shuffle:
        return np.arange(num_records)
    return np.random.default_rng([seed, epoch]).permutation(num_records)


# Consecutive batches share an epoch: each process (main or worker) draws an epoch's permutation once.
_cached_epoch_order = functools.lru_cache(maxsize=2)(epoch_order)


@dataclasses.dataclass(frozen=True)
class HostOrder:
    """Host `process_index` of `process_count`'s share of the global order.

    Positions count this host's records from the first batch of epoch 0: its `k`-th record belongs
    to global batch `k // local_batch_size` (epoch `that // batches_per_epoch`).
    """

    num_records: int
    global_batch_size: int
    seed: int
    shuffle: bool
    process_index: int
    process_count: int

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def batches_per_epoch(self) -> int:
        return self.num_records // self.global_batch_size

    def batch_indices(self, epoch: int, position: int) -> np.ndarray:
        """Record indices of this host's share of global batch `position` of `epoch`."""
        order = _cached_epoch_order(self.num_records, self.seed, epoch, self.shuffle)
        start = position * self.global_batch_size + self.process_index * self.local_batch_size
        return order[start:start + self.local_batch_size]

    def __call__(self, host_position: int) -> int:
        """The source index of this host's `host_position`-th record (see the class docstring)."""
        batch, row = divmod(int(host_position), self.local_batch_size)
        epoch, position = divmod(batch, self.batches_per_epoch)
        return int(self.batch_indices(epoch, position)[row])
