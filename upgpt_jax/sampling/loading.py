"""Everything sampling needs, loaded once: config, model, weights on the mesh, CLIP, tokenizer.

Two sources of weights:
- a training workdir (`train.py --workdir DIR`): the newest (or a chosen) checkpoint and the
  config it was trained with, read through the run directory (`upgpt_jax.rundir`), so
  `sample.py --workdir DIR` needs no config flag. The EMA weights are the default.
- converted weights (`python -m upgpt_jax.convert ... --out DIR`) with the config they fit, or
  a run's release (`python -m upgpt_jax.rundir.release`), which carries its config and CLIP.
  The released UPGPT checkpoint has no null embeddings (it was never trained with condition
  dropout), so missing fusion nulls come from a fresh initialisation; guidance scales other than
  1 then steer towards an untrained "null", which is why the released code ran no guidance.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from upgpt_jax.models.clip import ClipEncoders, clip_from_config
from upgpt_jax.models.fusion import MultimodalFusion
from upgpt_jax.models.upgpt import UPGPT, build_model
from upgpt_jax.rundir.release import released_config
from upgpt_jax.rundir.restore import restore_params, run_config
from upgpt_jax.rundir.shardings import abstract_params
from upgpt_jax.sharding import make_mesh, weight_shardings
from upgpt_jax.tokenizer import load_clip_tokenizer
from upgpt_jax.weights.params_io import load_params


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


def load_from_params(params_dir: str | os.PathLike, config: ml_collections.ConfigDict | None = None,
                     devices: list[jax.Device] | None = None) -> LoadedModel:
    """Converted weights (`python -m upgpt_jax.convert`) for `config`, or a release without one
    (its own config, see params_config); missing fusion nulls are initialised (see the module
    docstring); a missing UNet or VAE is an error. Half-precision weights are cast to float32."""
    config = config if config is not None else params_config(params_dir)
    model, mesh = _placement(config, devices)
    params, metadata = load_params(params_dir)
    params = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x, params)
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


def params_config(params_dir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a release (`python -m upgpt_jax.rundir.release`) was trained with; a ValueError
    for converted weights, which fit the config the user gives."""
    config = released_config(params_dir)
    if config is None:
        raise ValueError(f"{params_dir} holds converted weights without a run config: give --config (the config "
                         "the weights fit)")
    return config


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
