"""Writing and reading our converted parameter trees (weight files are read by weight_files).

Converted weights live in one directory:
  DIR/params/          an orbax PyTree checkpoint of {"unet": ..., "vae": ..., "fusion": {...}}
  DIR/metadata.json    where they came from (files, format, config, date) and what was ignored
Any sub-tree may be absent (e.g. a UNet-only import). Loading needs no model code, so the
sampling and training entry points and the run directory (`upgpt_jax.rundir`) can restore
weights, optionally straight onto shardings; the shapes a converted tree must have are the
converter's (`upgpt_jax.convert.part_shapes`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from upgpt_jax import storage
from upgpt_jax.weights.weight_files import WeightFileError

# The sub-trees of a converted-params tree, each optional.
PARTS = ("unet", "vae", "fusion")
PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"

PyTree = Any


def save_params(directory: str | os.PathLike, params: PyTree, metadata: Mapping[str, Any]) -> None:
    """Writes `params` (an orbax PyTree checkpoint) and `metadata` (JSON) to `directory`.

    The directory must not already hold converted params, so an import never silently mixes
    with an older one.
    """
    directory = storage.absolute(directory)  # local or gs://
    if (directory / PARAMS_DIR).exists():
        raise WeightFileError(
            f"{directory / PARAMS_DIR} already exists; choose a new output directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    (directory / METADATA_FILE).write_text(
        json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n"
    )


def load_params(
    directory: str | os.PathLike, target: PyTree | None = None
) -> tuple[PyTree, dict[str, Any]]:
    """(params, metadata) written by `save_params`.

    `target` is an optional abstract tree (jax.ShapeDtypeStruct leaves, with shardings to restore
    onto devices); without it arrays come back as they were saved (numpy on the host).
    """
    directory = storage.absolute(directory)  # local or gs://
    if not directory.is_dir():
        raise WeightFileError(f"converted params directory not found: {directory}")
    missing = [name for name in (PARAMS_DIR, METADATA_FILE) if not (directory / name).exists()]
    if missing:
        raise WeightFileError(
            f"{directory} is not a converted-params directory: missing {missing} "
            "(write one with `python -m upgpt_jax.convert`)"
        )
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
    except json.JSONDecodeError as error:
        raise WeightFileError(f"{directory / METADATA_FILE}: invalid JSON ({error})") from error
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(directory / PARAMS_DIR, target)
    except Exception as error:
        raise WeightFileError(
            f"{directory / PARAMS_DIR}: cannot restore the params ({error})"
        ) from error
    return params, metadata
