"""Deterministic, resumable, per-host input pipeline on grain: random-access source -> this host's batches.

Order (upgpt_jax.data.order). Epoch `e` visits the records in a seeded permutation of its own, cut
into global batches; host `p` of `P` reads the `p`-th contiguous slice of each, so the global batch
is the same whatever the number of hosts.

Grain. The batches are a grain dataset: `MapDataset.range` of this host's record positions (from
the state's batch on), `.map(HostOrder)` to source indices, `.map(source[...])` to records,
`.batch(batch_fn=transform)` to this host's batch, then `.to_iter_dataset()` with one read-ahead
thread of `prefetch` batches or, with `num_workers > 0`, `.mp_prefetch`: spawned worker processes (the
dataset is pickled into them, so source and transform must pickle) each build every
`num_workers`-th batch, and grain hands them back in order, so the number of workers never
changes the batches.

State. Where the iteration stands is `{"seed", "epoch", "position"}` (position = global batches
already delivered in that epoch): a JSON-able dict saved in the checkpoint. Restoring it rebuilds
the grain dataset from the next global batch, the one the interrupted run would have delivered
next. This is ours rather than grain's iterator state because grain's describes this host's
iterator (its place in its own host slice, each worker's place in its share), valid only for the
same number of hosts and workers; a count of global batches means the same on every host and for
any host count, so a run may resume on more or fewer hosts. Read-ahead (thread or workers) only
computes ahead; the state counts what was delivered.

Source. Anything with `__len__` and `__getitem__(int) -> dict` (a TFDS `tfds.data_source` /
ArrayRecord source, train.data.SyntheticPairs, data.features.FeatureSource, a list in tests).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grain
import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh

from upgpt_jax.data.order import HostOrder
from upgpt_jax.sharding import batch_axes, batch_sharding, batch_shards

if TYPE_CHECKING:  # not at run time: worker processes that unpickle only an index transform stay light
    from upgpt_jax.data.transforms import Batch, Record

STATE_KEYS = ("seed", "epoch", "position")


class InputPipeline:
    """Iterator over this host's batches: `next(pipeline)` is a dict of numpy arrays.

    `transform` maps a list of records to a batch dict (data.transforms.PixelTransform or
    FeatureTransform). `process_index`/`process_count` default to JAX's (override them in tests).
    `num_epochs=None` repeats forever. `prefetch` > 0 prepares that many batches ahead (a thread,
    or each worker's buffer); `num_workers` > 0 runs reading and `transform` in that many processes.
    """

    def __init__(self, source: Sequence[Record], global_batch_size: int, transform: Callable[[list[Record]], Batch],
                 *, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int | None = None, process_count: int | None = None, prefetch: int = 2,
                 num_workers: int = 0):
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} is not in [0, {self.process_count})")
        if global_batch_size <= 0 or global_batch_size % self.process_count:
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the "
                             f"process count {self.process_count} (each host loads an equal share)")
        if num_workers < 0 or prefetch < 0:
            raise ValueError(f"num_workers ({num_workers}) and prefetch ({prefetch}) must be >= 0")
        self.source = source
        self.num_records = len(source)
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // self.process_count
        self.batches_per_epoch = self.num_records // self.global_batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the source has {self.num_records} records, fewer than one global batch "
                             f"({self.global_batch_size})")
        self.transform = transform
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.prefetch = int(prefetch)
        self.num_workers = int(num_workers)
        self._state = {"seed": int(seed), "epoch": 0, "position": 0}
        self._iterator: grain.DatasetIterator | None = None

    # -- order -----------------------------------------------------------------------------------
    def _order(self) -> HostOrder:
        return HostOrder(self.num_records, self.global_batch_size, self._state["seed"], self.shuffle,
                         self.process_index, self.process_count)

    def local_indices(self, epoch: int, position: int) -> np.ndarray:
        """Record indices of this host's share of global batch `position` of `epoch`."""
        return self._order().batch_indices(epoch, position)

    def _dataset(self) -> grain.IterDataset:
        """This host's batches from the state's next global batch on (to the last epoch's end)."""
        rows = self.local_batch_size
        first = self._state["epoch"] * self.batches_per_epoch + self._state["position"]
        last = sys.maxsize // rows if self.num_epochs is None else self.num_epochs * self.batches_per_epoch
        batches = (grain.MapDataset.range(first * rows, last * rows)
                   .map(self._order())
                   .map(self.source.__getitem__)
                   .batch(rows, drop_remainder=True, batch_fn=self.transform))
        if not self.num_workers:  # a read-ahead thread of `prefetch` batches
            return batches.to_iter_dataset(grain.ReadOptions(num_threads=int(self.prefetch > 0),
                                                             prefetch_buffer_size=self.prefetch))
        _default_absl_flags()  # workers read ahead by themselves: no thread in them
        return batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=self.num_workers, per_worker_buffer_size=max(1, self.prefetch)))

    def _advance(self) -> None:
        epoch, position = self._state["epoch"], self._state["position"] + 1
        if position == self.batches_per_epoch:
            epoch, position = epoch + 1, 0
        self._state.update(epoch=epoch, position=position)

    def _finished(self) -> bool:
        return self.num_epochs is not None and self._state["epoch"] >= self.num_epochs

    # -- state -----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, int]:
        """Where iteration stands (after the last batch delivered): save it with the checkpoint."""
        return dict(self._state)

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a `get_state()` dict: the next batch is the one that followed it."""
        if set(state) != set(STATE_KEYS):
            raise ValueError(f"pipeline state must have exactly the keys {STATE_KEYS}, got {sorted(state)}")
        restored = {key: int(state[key]) for key in STATE_KEYS}
        if restored["epoch"] < 0 or not 0 <= restored["position"] < self.batches_per_epoch:
            raise ValueError(f"pipeline state {restored} is out of range: an epoch has "
                             f"{self.batches_per_epoch} batches of {self.global_batch_size} "
                             f"({self.num_records} records); was it saved for another dataset or batch size?")
        self.close()  # whatever was read ahead belongs to the old position
        self._state = restored

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> InputPipeline:
        return self

    def __next__(self) -> Batch:
        if self._finished():
            raise StopIteration
        if self._iterator is None:
            self._iterator = iter(self._dataset())
        try:
            batch = next(self._iterator)
        except BaseException:  # an error in a transform (or a worker): start afresh next time
            self.close()
            raise
        self._advance()
        if self.num_workers:  # grain's shared-memory arrays (freed with them), as plain numpy views
            batch = {name: np.asarray(value) for name, value in batch.items()}
        return batch

    def close(self) -> None:
        """Stop the read-ahead thread or worker processes (iteration can go on; it starts new ones)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _default_absl_flags() -> None:
    """Grain reads its absl flags (worker profiling, debug mode) when it starts worker processes,
    which fails in a program that never parsed flags (an argparse script, pytest, a notebook): mark
    them parsed, i.e. at their defaults. A later `absl.app.run` or `FLAGS(argv)` still parses argv."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Any) -> dict[str, jax.Array]:
    """This host's batch -> global `jax.Array`s, batch dim split over the mesh axes of the axis
    `rules`' "batch" entry (config.axis_rules).

    Every host calls this with its own share; on a `make_mesh` mesh (devices in process order)
    host p's rows become global rows [p * local, (p + 1) * local), matching the pipeline's order.
    Each host's devices must hold rows no other host's hold, which a batch rule replicating the
    batch across hosts would break (refused: every host would need the same rows).
    """
    sharding = batch_sharding(mesh, rules)
    shards, axes = batch_shards(mesh, rules), " x ".join(batch_axes(rules)) or "no"
    global_batch = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        rows = value.shape[0] * jax.process_count()
        if rows % shards:
            raise ValueError(f"batch field {name!r}: global batch of {rows} rows cannot be split over the "
                             f"mesh's {axes} axes ({shards} shards)")
        shape = (rows,) + value.shape[1:]
        if jax.process_count() > 1:
            held = {index[0].indices(rows) for index in sharding.addressable_devices_indices_map(shape).values()}
            if sum(stop - start for start, stop, _ in held) != value.shape[0]:
                raise ValueError(f"batch field {name!r}: this host's devices hold {sorted(held)} of the {rows} "
                                 f"rows, not {value.shape[0]} of their own: the batch rule ({axes} axes) must "
                                 "split the batch over every process")
        global_batch[name] = jax.make_array_from_process_local_data(sharding, value, shape)
    return global_batch


def global_batches(pipeline: InputPipeline, mesh: Mesh, rules: Any) -> Iterator[dict[str, jax.Array]]:
    """The pipeline's batches as global arrays on `mesh` (its state stays readable on `pipeline`)."""
    for local_batch in pipeline:
        yield make_global_batch(local_batch, mesh, rules)
