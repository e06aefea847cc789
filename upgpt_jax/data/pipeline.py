"""Deterministic, resumable, per-host input pipeline: random-access source -> global jax.Array batches.

Order. Epoch `e` visits the records in the permutation drawn by `np.random.default_rng([seed, e])`
(or in storage order without shuffling). The permutation is cut into global batches of
`global_batch_size` (the tail that does not fill one is dropped); within global batch `b`,
host `p` of `P` reads the `p`-th contiguous slice of `global_batch_size / P` indices. So the hosts
read disjoint slices, and the global batch is the same whatever the number of hosts.

State. Where the iteration stands is `{"seed", "epoch", "position"}` (position = global batches
already delivered in that epoch): a JSON-able dict to save beside a checkpoint. Restoring it gives
exactly the batch the interrupted run would have delivered next. Prefetching (a background
thread) only computes ahead; the state counts what was delivered, so it never changes the order.

Source. Anything with `__len__` and `__getitem__(int) -> dict` (e.g. a TFDS
`builder.as_data_source(split)`, or a list of dicts in tests).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from upgpt_jax.data.transforms import Batch, Record
from upgpt_jax.sharding import batch_axes, batch_sharding, batch_shards

STATE_KEYS = ("seed", "epoch", "position")


def epoch_order(num_records: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The record indices epoch `epoch` visits, in order (all hosts compute the same one)."""
    if not shuffle:
        return np.arange(num_records)
    return np.random.default_rng([seed, epoch]).permutation(num_records)


class InputPipeline:
    """Iterator over this host's batches: `next(pipeline)` is a dict of numpy arrays.

    `transform` maps a list of records to a batch dict (data.transforms.PixelTransform or
    FeatureTransform). `process_index`/`process_count` default to JAX's (override them in tests).
    `num_epochs=None` repeats forever. `prefetch` > 0 prepares that many batches in a thread.
    """

    def __init__(self, source: Sequence[Record], global_batch_size: int, transform: Callable[[list[Record]], Batch],
                 *, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int | None = None, process_count: int | None = None, prefetch: int = 2):
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} is not in [0, {self.process_count})")
        if global_batch_size <= 0 or global_batch_size % self.process_count:
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the "
                             f"process count {self.process_count} (each host loads an equal share)")
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
        self._state = {"seed": int(seed), "epoch": 0, "position": 0}
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._worker: _Prefetcher | None = None

    # -- order -----------------------------------------------------------------------------------
    def local_indices(self, epoch: int, position: int) -> np.ndarray:
        """Record indices of this host's share of global batch `position` of `epoch`."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, epoch_order(self.num_records, self._state["seed"], epoch, self.shuffle))
        start = position * self.global_batch_size + self.process_index * self.local_batch_size
        return self._order_cache[1][start:start + self.local_batch_size]

    def _advance(self, state: Mapping[str, int]) -> dict[str, int]:
        epoch, position = state["epoch"], state["position"] + 1
        if position == self.batches_per_epoch:
            epoch, position = epoch + 1, 0
        return {"seed": state["seed"], "epoch": epoch, "position": position}

    def _finished(self, state: Mapping[str, int]) -> bool:
        return self.num_epochs is not None and state["epoch"] >= self.num_epochs

    def _batches_from(self, state: dict[str, int]) -> Iterator[tuple[Batch, dict[str, int]]]:
        """(batch, state after it) from `state` on; runs in the prefetch thread when there is one."""
        while not self._finished(state):
            indices = self.local_indices(state["epoch"], state["position"])
            batch = self.transform([self.source[int(index)] for index in indices])
            state = self._advance(state)
            yield batch, state

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
        self._stop_worker()
        self._state = restored
        self._order_cache = None

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> InputPipeline:
        return self

    def __next__(self) -> Batch:
        if self._finished(self._state):
            raise StopIteration
        if self.prefetch <= 0:
            batch, self._state = next(self._batches_from(dict(self._state)))
            return batch
        if self._worker is None:
            self._worker = _Prefetcher(self._batches_from(dict(self._state)), self.prefetch)
        try:
            batch, self._state = self._worker.get()
        except BaseException:  # the thread has ended (an error, or the last epoch): start afresh next time
            self._stop_worker()
            raise
        return batch

    def close(self) -> None:
        """Stop the prefetch thread (iteration can go on afterwards; it restarts one)."""
        self._stop_worker()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Prefetcher:
    """Runs a batch generator in a daemon thread, `size` items ahead; errors re-raise in `get`."""

    _END = object()

    def __init__(self, items: Iterator[Any], size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self._thread.start()

    def _run(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
        except BaseException as error:  # handed to the consumer, who re-raises it
            self._put((None, error))
            return
        self._put((self._END, None))

    def _put(self, entry: tuple[Any, BaseException | None]) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        item, error = self._queue.get()
        if error is not None:
            raise error
        if item is self._END:
            raise StopIteration
        return item

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


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
