"""The mesh, the model and the frozen encoders of a run: what precompute needs, and what the rest of
a training run's set-up (upgpt_jax.train.build) starts from.

Why apart from the train state and step: precompute and the latent-scale measurement need the
VAE's posterior and CLIP on the mesh, not the UNet, its optimizer or its step; and the posterior is
unscaled, so these parts serve a `scale_by_std` run before and after its `model.scale_factor` is
measured (the cache key leaves the scale out).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from upgpt_jax.distributed import host_to_global
from upgpt_jax.models.clip import ClipEncoders, clip_from_config
from upgpt_jax.models.upgpt import UPGPT, build_model
from upgpt_jax.rundir.shardings import state_shardings
from upgpt_jax.rundir.vae import load_vae
from upgpt_jax.sharding import make_mesh, weight_shardings
from upgpt_jax.train.state import init_vae_boxed
from upgpt_jax.train.step import make_encode_fn

# Fields that only steer the loop: runs that differ only in them share what is built (and compiled).
LOOP_FIELDS = ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_consecutive_nan",
               "profile_steps", "peak_tflops")


def build_key(config: ml_collections.ConfigDict, *, drop_scale: bool = False) -> ml_collections.FrozenConfigDict:
    """`config` without the fields that change nothing built (loop fields, data; with `drop_scale`
    also `model.scale_factor`): equal keys, equal parts, so e.g. a test or notebook calling `train`
    repeatedly compiles once."""
    key = config.copy_and_resolve_references()
    with key.unlocked():
        for field in LOOP_FIELDS:
            key.train[field] = None
        key.data = ml_collections.ConfigDict()
        if drop_scale:
            key.model.scale_factor = None
    return ml_collections.FrozenConfigDict(key)


@dataclasses.dataclass(frozen=True)
class Encoders:
    """The device mesh, the model (for its VAE posterior, which the latent scale does not change) and
    the frozen CLIP, placed on the mesh; `encode` is `step.make_encode_fn`'s pixel -> feature function."""

    mesh: Mesh
    model: UPGPT
    clip: ClipEncoders
    clip_params: Any
    encode: Callable[..., dict[str, jax.Array]]


def build_encoders(config: ml_collections.ConfigDict) -> Encoders:
    """`Encoders` of `config`, built once per configuration (`build_key`, scale left out) and devices."""
    return _build_encoders(build_key(config, drop_scale=True), tuple(jax.devices()))


@functools.lru_cache(maxsize=4)
def _build_encoders(key: ml_collections.FrozenConfigDict, devices: tuple[jax.Device, ...]) -> Encoders:
    config = ml_collections.ConfigDict(key)
    mesh = make_mesh(config.mesh, devices, config.get("mesh_dcn"))
    model = build_model(config.model)  # scale_factor None: the posterior is unscaled (train.build sets the run's)
    clip, clip_params = clip_from_config(config.model.clip, seed=config.seed, dtype=jnp.dtype(config.model.dtype))
    return Encoders(
        mesh=mesh,
        model=model,
        clip=clip,
        clip_params=jax.tree.map(host_to_global, clip_params, weight_shardings(clip_params, mesh, config.axis_rules)),
        encode=make_encode_fn(model, clip, mesh, config.axis_rules),
    )


def initial_vae(config: ml_collections.ConfigDict, encoders: Encoders) -> Any:
    """The VAE params a training run of `config` starts from, placed as its train state places them:
    `train.init_vae_from`'s, or drawn from `config.seed` (the VAE alone: no UNet is built)."""
    init = functools.partial(init_vae_boxed, encoders.model, config.model, config.seed)
    boxed = jax.eval_shape(init)
    shardings = state_shardings(boxed, encoders.mesh, config.axis_rules)
    if config.train.init_vae_from:
        return jax.tree.map(host_to_global, load_vae(config.train.init_vae_from, like=nn.unbox(boxed)), shardings)
    return jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
