"""A training run's config and a checkpoint's weights, read without the trainer.

The config a run was trained with travels inside each checkpoint, so sampling, eval and the
exporter need only the run's folder. Only the weights are read: the optimizer state (twice the
trainable params) stays on disk. The EMA weights are the default, as LDM samples from its EMA.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from upgpt_jax import storage
from upgpt_jax.models.upgpt import build_model
from upgpt_jax.rundir.layout import CHECKPOINT_DIR, read_checkpoints
from upgpt_jax.rundir.shardings import abstract_params, stage_parts, with_shardings
from upgpt_jax.sharding import make_mesh

WEIGHTS = ("ema", "params")


def run_config(workdir: str | os.PathLike, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """(the config a run was trained with, the checkpoint step) — cheap: reads JSON only."""
    manager = read_checkpoints(workdir)
    steps = manager.all_steps()
    directory = storage.absolute(workdir) / CHECKPOINT_DIR
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}: train first (python train.py --workdir {workdir})")
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; there are {sorted(steps)}")
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    manager.close()
    return tuples_config(ml_collections.ConfigDict(config)), int(step)


def restore_params(workdir: str | os.PathLike, config: ml_collections.ConfigDict, step: int, weights: str = "ema",
                   mesh: Mesh | None = None) -> dict[str, Any]:
    """The parameter tree of checkpoint `step` of a run of `config` ({"unet", "fusion", "vae"} for
    the diffusion stage, {"vae"} for the VAE stage), placed by the config's rules on `mesh`.

    Only the weights are read: the optimizer state (twice the trainable params) stays on disk.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    model = build_model(config.model)
    mesh = mesh or make_mesh(config.mesh, jax.devices(), config.get("mesh_dcn"))
    trainable, frozen = stage_parts(config.train.stage)
    shapes, shardings = abstract_params(model, config.model, mesh, config.axis_rules)
    groups = {"ema_params" if weights == "ema" else "params": trainable, "frozen_params": frozen}
    target = {group: {name: with_shardings(shapes[name], shardings[name]) for name in names if name in shapes}
              for group, names in groups.items()}
    manager = read_checkpoints(workdir)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    manager.close()
    return {name: tree for group in restored["state"].values() for name, tree in group.items()}


def tuples_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """JSON turned the config's tuples into lists; module fields and mesh rules want tuples back."""
    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return tuple(convert(item) for item in value)
        return value

    return ml_collections.ConfigDict(convert(json.loads(config.to_json())))
