"""Where a training run keeps its files, and the one place their orbax managers are built.

  DIR/checkpoints/<step>/state    the TrainState (orbax PyTree)
  DIR/checkpoints/<step>/data     the input pipeline's JSON state
  DIR/checkpoints/<step>/config   the run's config (JSON), so a checkpoint alone can be sampled
  DIR/metrics.jsonl               one JSON object per logged step (upgpt_jax.train.metrics_log)
  DIR/tensorboard/                the same scalars and the sample grids as TensorBoard events
  DIR/profile/                    `train.profile_steps`' trace (upgpt_jax.train.profiling)

The trainer writes through `checkpoint_manager(create=True)` (upgpt_jax.train.checkpointing, which
also sets damaged steps aside); readers open the folder with `read_checkpoints`, which never
creates it, so a mistyped --workdir is an error rather than a new empty run.
"""
from __future__ import annotations

import os

import orbax.checkpoint as ocp

from upgpt_jax import storage

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"
# Files a step folder cannot restore without (orbax's layout): a folder lacking one is set aside at once.
REQUIRED_FILES = ("state/_METADATA", "data", "config")


def checkpoint_manager(directory: storage.AnyPath, keep: int | None = None, asynchronous: bool = True,
                       create: bool = False) -> ocp.CheckpointManager:
    """An orbax manager of checkpoint folder `directory` (local or gs://): keeping the `keep` newest
    steps, saving in the background when `asynchronous`, creating the folder when `create`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=create)
    return ocp.CheckpointManager(directory, options=options)


def read_checkpoints(workdir: str | os.PathLike) -> ocp.CheckpointManager:
    """The manager of run `workdir`'s existing checkpoint folder, for reading; FileNotFoundError
    when `workdir` holds none."""
    directory = storage.absolute(workdir) / CHECKPOINT_DIR  # local or gs://
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} has no {CHECKPOINT_DIR}/ folder: expected a train.py --workdir")
    return checkpoint_manager(directory)
