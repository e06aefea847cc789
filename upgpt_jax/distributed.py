"""Joining a multi-process (multi-host) JAX job: one call before anything touches the devices.

Every process of a multi-host job runs the same program on its own devices; `jax.distributed`
connects them (a coordinator at process 0's address, reached by all), after which
`jax.devices()` lists the devices of every process and jitted functions, global arrays and
orbax checkpoints span them. It must run before the first use of a device (JAX fixes its
backends then), so entry points call `initialize` first thing.

Three ways in:
- explicit: `coordinator_address`, `num_processes` and `process_id` given (multi-node GPU
  without a scheduler JAX knows, or several CPU processes). On CPU, cross-process collectives
  need an implementation: gloo (TCP) is switched on.
- auto-detect: `auto_detect=True` and no flags: `jax.distributed.initialize()` without
  arguments, which reads the environment itself (Cloud TPU pod slices from the TPU metadata,
  SLURM `srun` tasks, Open MPI `mpirun` ranks; one GPU per process on SLURM/Open MPI).
- neither: a plain single process; nothing happens.
Detection is opt-in because only JAX's private cluster classes can tell a TPU pod slice from
a single machine without asking the TPU metadata server, and a wrong guess would hang.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

EXPLICIT_FLAGS = ("coordinator_address", "num_processes", "process_id")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None, *,
               auto_detect: bool = False) -> None:
    """Join the job described by the arguments (see the module docstring); at most once per process.

    `local_device_ids` restricts this process to those local accelerators (e.g. one GPU per
    process when several processes share a node). Raises ValueError for an incomplete or
    inconsistent description, RuntimeError when jax.distributed is already initialised.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if any(value is not None for value in given.values()):
        missing = [name for name in EXPLICIT_FLAGS if given[name] is None]
        if missing:
            raise ValueError(f"a multi-process job needs all of {', '.join(EXPLICIT_FLAGS)}; missing: "
                             f"{', '.join(missing)} (or pass none of them and auto-detect the cluster)")
        if auto_detect:
            raise ValueError("auto-detection and explicit coordinator flags exclude each other; pass one or the other")
        if ":" not in coordinator_address:
            raise ValueError(f"coordinator_address {coordinator_address!r} must be host:port (process 0's host)")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} must be in [0, num_processes={num_processes})")
    elif not auto_detect:
        if local_device_ids is not None:
            raise ValueError("local_device_ids only applies to a multi-process job (give the coordinator flags "
                             "or auto-detect)")
        return
    if jax.distributed.is_initialized():
        raise RuntimeError("jax.distributed is already initialised in this process; initialize() runs once")
    # CPU processes exchange collectives over TCP only with an implementation chosen before the
    # CPU backend starts (gloo is the default on recent JAX, absent on older; harmless elsewhere).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Explicit flags stay explicit: JAX's detection would otherwise still fill in unset local_device_ids
    # (one GPU per process under SLURM, even when one process per node should drive all of them).
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id,
                               local_device_ids=None if local_device_ids is None else list(local_device_ids),
                               cluster_detection_method=None if auto_detect else "deactivate")


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process reaches the barrier `name` (unique per run), at the jax.distributed
    coordinator rather than with a device collective: on CPU a gloo collective's first use fails
    when the processes arrive more than 30 s apart (one still compiling, or loading a checkpoint)."""
    if jax.process_count() == 1:
        return
    _coordinator_client().wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


_COORDINATOR_KEYS = itertools.count()  # one key per call: every process makes the same calls in the same order


def any_process_at_coordinator(flag: bool, timeout_s: int = 3600) -> bool:
    """`any_process`, through the jax.distributed coordinator's key-value store instead of a device
    collective: for decisions before training starts (which checkpoint restores, whether the workdir
    is held), where processes may arrive minutes apart (a collective's first use on CPU fails or hangs
    when they arrive more than 30 s apart)."""
    if jax.process_count() == 1:
        return bool(flag)
    client = _coordinator_client()
    key = f"upgpt_jax/any/{next(_COORDINATOR_KEYS)}"
    client.key_value_set(f"{key}/{jax.process_index()}", "1" if flag else "0")
    return any(client.blocking_key_value_get(f"{key}/{index}", timeout_s * 1000) == "1"
               for index in range(jax.process_count()))


def from_main_process(value: str, timeout_s: int = 3600) -> str:
    """Process 0's `value` on every process (the others' `value` is ignored), through the coordinator."""
    if jax.process_count() == 1:
        return value
    client = _coordinator_client()
    key = f"upgpt_jax/main/{next(_COORDINATOR_KEYS)}"
    if jax.process_index() == 0:
        client.key_value_set(key, "=" + value)  # never empty
        return value
    return client.blocking_key_value_get(key, timeout_s * 1000)[1:]


def _coordinator_client() -> Any:
    from orbax.checkpoint import multihost

    return multihost.get_jax_distributed_client()


def compile_then_meet(function: Any, name: str, *args: Any) -> None:
    """In a multi-process run, compile jitted `function` for `args` (the call that follows reuses
    the executable) and wait for every process: the first cross-process collective must not find
    one process still compiling."""
    if jax.process_count() > 1:
        function.lower(*args).compile()
        wait_for_all_processes(f"upgpt_jax: compiled {name}")


def is_main_process() -> bool:
    """Whether this process prints and writes the run's logs (process 0)."""
    return jax.process_index() == 0


def host_to_global(tree: Any, sharding: Sharding) -> Any:
    """Host values that every process holds alike (e.g. weights loaded from the same file or drawn
    from the same seed) -> global arrays with `sharding`, each process filling its own shards.

    `jax.device_put` onto devices of other processes would first compare the values across
    processes, one collective per leaf; here nothing crosses processes.
    """
    def to_global(value: Any) -> jax.Array:
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(to_global, jax.device_get(tree))


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process; every process must call this at the same point.

    For decisions all processes must take together (e.g. saving a checkpoint, a collective
    operation, when only some of them received SIGTERM).
    """
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))
