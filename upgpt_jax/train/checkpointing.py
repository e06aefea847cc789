"""Checkpoints of a training run (orbax) and the preemption signal.

A checkpoint step folder holds three items: `state` (the TrainState: params, optimizer state,
EMA, frozen VAE, step, RNG, skipped count), `data` (the input pipeline's JSON state, so the
resumed run reads the batch the interrupted one would have read next) and `config` (the run's
config, for reference and for sampling from the checkpoint alone). Saves are asynchronous and
atomic (orbax writes to a temporary folder and renames it); only the newest `keep` remain.

What can still go wrong, and what it costs:
- the newest checkpoint is damaged (a data file truncated, its manifest gone, a step folder without
  `state/`): it is set aside as `<step>.set-aside-<time>` with a one-line warning and the run
  resumes from the previous one. A checkpoint is set aside only when it lacks files every restore
  needs (`set_aside_incomplete`) or an older one restores (`restore_latest`), so a config that no
  longer fits the run (every restore fails) is an error, not a reason to move checkpoints away;
- a save fails (no permission, disk full): orbax raises in its background thread, at the next save
  or wait, as `CheckpointSaveError`; the steps since the last written checkpoint are lost.
"""
from __future__ import annotations

import json
import logging
import pathlib
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

from upgpt_jax import storage
from upgpt_jax.distributed import any_process_at_coordinator, is_main_process, wait_for_all_processes
from upgpt_jax.rundir.layout import REQUIRED_FILES, checkpoint_manager
from upgpt_jax.train.state import TrainState


class _OrbaxSaveTracebacks(logging.Filter):
    """Drops orbax's logged tracebacks of a failed background save: the same error reaches the
    trainer as a CheckpointSaveError, reported in one line (with the steps it costs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and "orbax" in record.pathname)


_ORBAX_FILTER = _OrbaxSaveTracebacks()


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the run stops (its steps since the last checkpoint are lost)."""


class CheckpointRestoreError(RuntimeError):
    """No checkpoint of the run restores (and none was set aside: e.g. the config no longer fits)."""


class Checkpointer:
    """Saves and restores a run's checkpoints under `directory`."""

    def __init__(self, directory: str | pathlib.Path, keep: int, asynchronous: bool = True):
        if jax.process_count() > 1:
            _barriers_through_the_coordinator()
        logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # once: a filter is added only if absent
        self.directory = storage.absolute(directory)
        if is_main_process():
            self._check_writable()
        self.keep, self.asynchronous = keep, asynchronous
        # A local folder or a URL (gs://...: orbax writes the arrays through tensorstore's GCS client).
        self.manager = checkpoint_manager(self.directory, keep, asynchronous, create=True)

    def _check_writable(self) -> None:
        """Refuse a checkpoint folder that cannot be written now, not at the first save (steps later)."""
        try:
            storage.check_writable(self.directory)
        except OSError as error:
            raise CheckpointSaveError(f"cannot write checkpoints to {self.directory} ({first_line(error)}); "
                                      f"nothing was trained") from error

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: Mapping[str, Any],
             config: ml_collections.ConfigDict) -> None:
        """Start saving (returns once the arrays are copied off the devices; writing continues).
        Raises CheckpointSaveError when this save, or the previous one still being written, fails."""
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(dict(data_state)),
                config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            ), force=True)
        except Exception as error:  # orbax re-raises its background thread's error here
            raise CheckpointSaveError(f"saving a checkpoint by step {step} in {self.directory} failed: "
                                      f"{first_line(error)}") from error

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """(state placed like `target`'s ShapeDtypeStructs with shardings, the data pipeline state)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=ocp.args.JsonRestore(),
        ))
        return restored["state"], dict(restored["data"])

    def set_aside_incomplete(self) -> None:
        """Set aside every step folder that lacks a file no restore can do without (REQUIRED_FILES):
        before anything reads the newest checkpoint's config."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            missing = [name for name in REQUIRED_FILES if not (self.directory / str(step) / name).exists()]
            if any_process_at_coordinator(bool(missing)):
                self._set_aside(step, f"missing {', '.join(missing) or 'files on another process'}")

    def restore_latest(self, target: TrainState) -> tuple[int, TrainState, dict[str, Any]] | None:
        """(step, state, data state) of the newest checkpoint that restores with finite weights, or
        None when there is none. Newer ones that do not are set aside once an older one restores."""
        failed: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, data_state = self.restore(step, target)
                problem = None if _finite(state.params) else "non-finite weights"
            except Exception as error:  # tensorstore/orbax errors of a damaged checkpoint have no common type
                problem = first_line(error)
            if any_process_at_coordinator(problem is not None):
                failed.append((step, problem or "failed on another process"))
                continue
            for bad_step, bad_problem in failed:
                self._set_aside(bad_step, bad_problem)
            return step, state, data_state
        if failed:
            raise CheckpointRestoreError(f"no checkpoint in {self.directory} restores (newest: step {failed[0][0]}: "
                                         f"{failed[0][1]}); does the config still fit the run?")
        return None

    def _set_aside(self, step: int, problem: str) -> None:
        """Move step folder `step` out of the run's steps (process 0; the others wait) and warn."""
        name = f"{step}.set-aside-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        if is_main_process():
            (self.directory / str(step)).rename(self.directory / name)
            print(f"warning: checkpoint {step} is damaged ({problem}); set aside as {self.directory / name}",
                  flush=True)
        wait_for_all_processes(f"upgpt_jax: set aside checkpoint {step}")
        self.manager.close()
        self.manager = checkpoint_manager(self.directory, self.keep, self.asynchronous, create=True)

    def wait(self) -> None:
        """Block until pending saves are on disk; CheckpointSaveError if one failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise CheckpointSaveError(f"saving a checkpoint in {self.directory} failed: {first_line(error)}") from error

    def close(self) -> None:
        self.manager.close()


def _finite(tree: Any) -> bool:
    """Whether this process's shards of `tree` are all finite (read on the host: no collective)."""
    return all(np.isfinite(np.asarray(shard.data)).all() for leaf in jax.tree.leaves(tree)
               for shard in leaf.addressable_shards)


def first_line(error: BaseException) -> str:
    """`Type: message`, the message cut to its first line (orbax/tensorstore messages run to pages)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


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
