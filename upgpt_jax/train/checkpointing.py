"""Checkpoints of a training run (orbax) and the preemption signal.

A checkpoint step folder holds three items: `state` (the TrainState: params, optimizer state,
EMA, frozen VAE, step, RNG, skipped count), `data` (the input pipeline's JSON state, so the
resumed run reads the batch the interrupted one would have read next) and `config` (the run's
config, for reference and for sampling from the checkpoint alone). Saves are asynchronous and
atomic (orbax writes to a temporary folder and renames it); only the newest `keep` remain.
"""
from __future__ import annotations

import json
import pathlib
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import flags

from upgpt_jax import storage
from upgpt_jax.train.state import TrainState


class Checkpointer:
    """Saves and restores a run's checkpoints under `directory`."""

    def __init__(self, directory: str | pathlib.Path, keep: int, asynchronous: bool = True):
        if jax.process_count() > 1:
            _barriers_through_the_coordinator()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
        # A local folder or a URL (gs://...: orbax writes the arrays through tensorstore's GCS client).
        self.manager = ocp.CheckpointManager(storage.absolute(directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: Mapping[str, Any],
             config: ml_collections.ConfigDict) -> None:
        """Start saving (returns once the arrays are copied off the devices; writing continues)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state)),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        ), force=True)

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """(state placed like `target`'s ShapeDtypeStructs with shardings, the data pipeline state)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=ocp.args.JsonRestore(),
        ))
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        """Block until pending saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


ORBAX_DISTRIBUTED_BARRIER = "experimental_orbax_use_distributed_barrier"


def _barriers_through_the_coordinator() -> None:
    """Make orbax synchronise processes at the jax.distributed coordinator (a barrier with a timeout of
    minutes) instead of with a device collective: on CPU (gloo) a collective's first use fails when
    the processes arrive more than 30 s apart, e.g. one still compiling. (Takes effect where absl
    flags are parsed, as in train.py; elsewhere orbax keeps its default.)"""
    if ORBAX_DISTRIBUTED_BARRIER in flags.FLAGS:
        flags.FLAGS[ORBAX_DISTRIBUTED_BARRIER].value = True


class PreemptionSignal:
    """Records SIGTERM (a preemption notice) instead of dying, so the loop can save and exit.

    Use as a context manager around the loop; the previous handler comes back on exit. Outside
    the main thread (where signals cannot be handled) it only never fires.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionSignal:
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.received = number

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
