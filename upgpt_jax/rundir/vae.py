"""The VAE of a run, for `train.init_vae_from`: the diffusion stage starts from a VAE-stage run's
autoencoder (or converted weights), and `scale_by_std` measures its latents."""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from upgpt_jax import storage
from upgpt_jax.rundir.layout import CHECKPOINT_DIR
from upgpt_jax.rundir.restore import restore_params, run_config
from upgpt_jax.weights.params_io import load_params


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
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: expected a training workdir (with checkpoints/) or converted params")
    params, _ = load_params(path)
    if "vae" not in params:
        raise ValueError(f"{path} holds no VAE weights (it has {sorted(params)})")
    return params["vae"]
