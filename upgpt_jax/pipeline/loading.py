"""Everything sampling needs, loaded once: config, model, weights on the mesh, CLIP, tokenizer.

Two sources of weights:
- a training workdir (`train.py --workdir DIR`): the newest (or a chosen) checkpoint and the
  config it was trained with, which travels inside the checkpoint, so `sample.py --workdir DIR`
  needs no config flag. The EMA weights are used by default, as LDM samples from its EMA.
- converted weights (`python -m upgpt_jax.convert ... --out DIR`) with the config they fit.
  The released UPGPT checkpoint has no null embeddings (it was never trained with condition
  dropout), so missing fusion nulls come from a fresh initialisation; guidance scales other than
  1 then steer towards an untrained "null", which is why the released code ran no guidance.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from upgpt_jax import storage
from upgpt_jax.models.clip import ClipEncoders, clip_from_config
from upgpt_jax.models.fusion import MultimodalFusion
from upgpt_jax.models.upgpt import UPGPT, build_model
from upgpt_jax.sharding import make_mesh, weight_shardings
from upgpt_jax.tokenizer import load_clip_tokenizer
from upgpt_jax.train.state import abstract_params, stage_parts, with_shardings

CHECKPOINT_DIR = "checkpoints"  # as upgpt_jax.train.trainer writes it
WEIGHTS = ("ema", "params")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample: params {"unet", "vae", "fusion"} placed on `mesh`."""

    config: ml_collections.ConfigDict
    model: UPGPT
    params: Any
    clip: ClipEncoders
    clip_params: Any
    tokenizer: Any
    mesh: Mesh
    source: dict[str, Any]  # where the weights came from, for the outputs' JSON


def load_from_workdir(workdir: str | os.PathLike, step: int | None = None, weights: str = "ema",
                      devices: list[jax.Device] | None = None) -> LoadedModel:
    """The model of a diffusion-stage training run: checkpoint `step` (default: the newest) with its config."""
    config, step = run_config(workdir, step)
    if config.train.stage != "diffusion":
        raise ValueError(f"{workdir} is a {config.train.stage!r}-stage run; sampling needs a diffusion-stage run")
    model, mesh = _placement(config, devices)
    params = restore_params(workdir, config, step, weights, mesh)
    return _assemble(config, model, mesh, params, dict(workdir=str(workdir), step=int(step), weights=weights))


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
    manager = _manager(workdir)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    manager.close()
    return {name: tree for group in restored["state"].values() for name, tree in group.items()}


def load_vae(path: str | os.PathLike, like: Any = None) -> Any:
    """The VAE params of a training run (its newest checkpoint's EMA; either stage) or of a
    converted-params folder; with `like` (a tree of arrays or shapes) they must have its names and
    shapes, else a ValueError says the VAE does not fit."""
    vae = _read_vae(storage.path(path))
    if like is not None and (jax.tree.structure(vae) != jax.tree.structure(like) or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(vae), jax.tree.leaves(like)))):
        raise ValueError(f"train.init_vae_from={path}: its VAE does not fit this config's model.vae "
                         "(different parameter names or shapes)")
    return vae


def _read_vae(path: storage.AnyPath) -> Any:
    if (path / CHECKPOINT_DIR).is_dir():
        config, step = run_config(path)
        return jax.device_get(restore_params(path, config, step, "ema")["vae"])
    from upgpt_jax.convert.params_io import load_params

    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a training workdir (with checkpoints/) or converted params")
    params, _ = load_params(path)
    if "vae" not in params:
        raise ValueError(f"{path} holds no VAE weights (it has {sorted(params)})")
    return params["vae"]


def run_config(workdir: str | os.PathLike, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """(the config a run was trained with, the checkpoint step) — cheap: reads JSON only."""
    manager = _manager(workdir)
    steps = manager.all_steps()
    directory = storage.absolute(workdir) / CHECKPOINT_DIR
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}: train first (python train.py --workdir {workdir})")
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; there are {sorted(steps)}")
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    manager.close()
    return _tuples(ml_collections.ConfigDict(config)), int(step)


def _manager(workdir: str | os.PathLike) -> ocp.CheckpointManager:
    directory = storage.absolute(workdir) / CHECKPOINT_DIR  # local or gs://
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} has no {CHECKPOINT_DIR}/ folder: expected a train.py --workdir")
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))


def load_from_params(params_dir: str | os.PathLike, config: ml_collections.ConfigDict,
                     devices: list[jax.Device] | None = None) -> LoadedModel:
    """Converted weights (`python -m upgpt_jax.convert`) for `config`; missing fusion nulls are
    initialised (see the module docstring); a missing UNet or VAE is an error."""
    from upgpt_jax.convert.params_io import load_params

    model, mesh = _placement(config, devices)
    params, metadata = load_params(params_dir)
    missing = [part for part in ("unet", "vae") if part not in params]
    if missing:
        raise ValueError(f"{params_dir} lacks the {missing} weights; sampling needs the UNet and the VAE")
    standardize = config.model.get("standardize_conditions", False)
    if standardize and "condition_stats" not in params:
        raise ValueError(f"{params_dir} carries no condition statistics (a training run here measures them; "
                         "checkpoints from elsewhere have none); sample it with model.standardize_conditions=False")
    fresh_fusion, converted_fusion = _fresh_fusion(config), params.get("fusion", {})
    source = dict(params_dir=str(params_dir), initialised=sorted(set(fresh_fusion) - set(converted_fusion)),
                  converted_from=metadata.get("sources"))
    params = {"unet": params["unet"], "vae": params["vae"], "fusion": {**fresh_fusion, **converted_fusion},
              **({"condition_stats": params["condition_stats"]} if standardize else {})}
    shardings = abstract_params(model, config.model, mesh, config.axis_rules)[1]
    return _assemble(config, model, mesh, jax.device_put(params, {name: shardings[name] for name in params}), source)


def _placement(config: ml_collections.ConfigDict, devices: list[jax.Device] | None) -> tuple[UPGPT, Mesh]:
    return build_model(config.model), make_mesh(config.mesh, devices or jax.devices(), config.get("mesh_dcn"))


def _fresh_fusion(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Freshly initialised fusion params (cheap: no UNet)."""
    fusion = MultimodalFusion(**{key: tuple(value) if isinstance(value, list) else value
                                 for key, value in config.model.fusion.to_dict().items()})
    inputs = (jnp.zeros((1, config.model.clip.max_length, config.model.fusion.text_dim)),
              jnp.zeros((1, config.model.fusion.num_parts, config.model.fusion.style_dim)),
              jnp.zeros((1, config.model.fusion.pose_dim)))
    return nn.unbox(fusion.init(jax.random.key(config.seed), *inputs))["params"]


def _assemble(config: ml_collections.ConfigDict, model: UPGPT, mesh: Mesh, params: Any,
              source: dict[str, Any]) -> LoadedModel:
    clip, clip_params = clip_from_config(config.model.clip, seed=config.seed, dtype=jnp.dtype(config.model.dtype))
    clip_params = jax.device_put(clip_params, weight_shardings(clip_params, mesh, config.axis_rules))
    return LoadedModel(config=config, model=model, params=params, clip=clip, clip_params=clip_params,
                       tokenizer=load_clip_tokenizer(), mesh=mesh, source=source)


def _tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """JSON turned the config's tuples into lists; module fields and mesh rules want tuples back."""
    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return tuple(convert(item) for item in value)
        return value

    return ml_collections.ConfigDict(convert(json.loads(config.to_json())))
