"""LDM's `scale_by_std`: the latent scale factor of a VAE trained here, measured once per run.

Diffusion assumes latents of about unit variance: the noise schedule's signal-to-noise ratios are
set for that. SD's 0.18215 fits SD's autoencoder only; a VAE trained here has latents of another
spread (the tiny config's f=4 VAE: std ~3.3, so 0.18215 leaves them at ~0.6 and every timestep
noisier than the schedule means). With `model.scale_by_std`, the diffusion stage sets
`model.scale_factor` = 1 / std of the first global training batch's latents (posterior means, all
elements pooled, as LDM's `z.flatten().std()`), with the run's frozen encoders (upgpt_jax.train.encoders:
the posterior is unscaled) and before its state and step are built. The value goes into the
run's config, so checkpoints, resumes and sampling all use it; a resumed run reads it back from
its checkpoint rather than measuring again.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from tqdm import tqdm

from upgpt_jax.data.pipeline import make_global_batch
from upgpt_jax.distributed import compile_then_meet, is_main_process
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.models.vae import DiagonalGaussian
from upgpt_jax.rundir.restore import run_config
from upgpt_jax.sharding import on_mesh
from upgpt_jax.train.data import training_pipeline
from upgpt_jax.train.encoders import Encoders, initial_vae


def resolve_scale_factor(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, resumed: bool,
                         encoders: Encoders) -> ml_collections.ConfigDict:
    """`config`, or with `model.scale_by_std` in the diffusion stage a copy whose `model.scale_factor`
    is measured with the run's `encoders` (fresh run) or the run's own (`resumed` run in `workdir`)."""
    if not config.model.get("scale_by_std", False) or config.train.stage != "diffusion":
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    if resumed:
        scale, how = float(run_config(workdir)[0].model.scale_factor), "read back from the run's checkpoint"
    else:
        scale, how = measure_scale_factor(config, encoders), "1 / std of the first batch's latents"
    config.model.scale_factor = scale
    if is_main_process():
        tqdm.write(f"model.scale_factor = {scale:.6f} (scale_by_std: {how})")
    return config


def measure_scale_factor(config: ml_collections.ConfigDict, encoders: Encoders) -> float:
    """1 / std of the latents of the first global batch of the training data (pixel or features
    mode) under the VAE the run starts from (`upgpt_jax.train.encoders.initial_vae`), on the encoders' mesh."""
    mesh, rules = encoders.mesh, config.axis_rules
    with training_pipeline(config) as pipeline:
        batch = next(pipeline)
    if config.data.features_dir:
        moments = make_global_batch({"latent_moments": batch["latent_moments"]}, mesh, rules)["latent_moments"]
        measure, arguments = jax.jit(lambda m: DiagonalGaussian.from_moments(m).mean.std()), (moments,)
    else:
        images = make_global_batch({"image": batch["image"]}, mesh, rules)["image"]

        def latent_std(params: Any, x: jax.Array) -> jax.Array:
            posterior = encoders.model.apply({"params": {"vae": params}}, x, method=UPGPT.posterior)
            return posterior.mean.astype(jnp.float32).std()

        measure = jax.jit(on_mesh(latent_std, mesh, rules))
        arguments = (initial_vae(config, encoders), images)
    compile_then_meet(measure, "scale_by_std", *arguments)
    std = float(measure(*arguments))
    if not std > 0:
        raise ValueError(f"scale_by_std: the first batch's latents have std {std}; cannot scale by it")
    return 1.0 / std
