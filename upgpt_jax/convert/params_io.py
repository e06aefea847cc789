"""Writing and reading our converted parameter trees (weight files are read by weight_files).

Converted weights live in one directory:
  DIR/params/          an orbax PyTree checkpoint of {"unet": ..., "vae": ..., "fusion": {...}}
  DIR/metadata.json    where they came from (files, format, config, date) and what was ignored
Any sub-tree may be absent (e.g. a UNet-only import). Loading needs no model code, so the
sampling and training entry points can restore weights, optionally straight onto shardings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from upgpt_jax import storage
from upgpt_jax.convert.weight_files import WeightFileError

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


def abstract_params(model_config: Any, parts: Sequence[str] = PARTS) -> dict[str, PyTree]:
    """The shapes (jax.ShapeDtypeStruct, unboxed) of the converted tree for `config.model`.

    Of the fusion only the pose projection has released weights (its null tokens and the
    "learned" mode's layers start from their initialisation).
    """
    from upgpt_jax.models.fusion import MultimodalFusion
    from upgpt_jax.models.unet import UNet
    from upgpt_jax.models.vae import AutoencoderKL

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    rng = jax.random.key(0)
    shapes: dict[str, PyTree] = {}
    if "unet" in parts:
        unet = UNet(**model_config.unet)
        size = 2 ** (len(unet.channel_mult) - 1)  # The smallest latent every level can halve.
        sample = jax.ShapeDtypeStruct((1, size, size, unet.in_channels), np.float32)
        context = jax.ShapeDtypeStruct((1, 1, unet.context_dim), np.float32)
        timesteps = jax.ShapeDtypeStruct((1,), np.int32)
        shapes["unet"] = jax.eval_shape(unet.init, rng, sample, timesteps, context)["params"]
    if "vae" in parts:
        vae = AutoencoderKL(**model_config.vae)
        size = 2 ** (len(vae.channel_mult) - 1)
        image = jax.ShapeDtypeStruct((1, size, size, vae.in_channels), np.float32)
        shapes["vae"] = jax.eval_shape(vae.init, rng, image)["params"]
    if "fusion" in parts:
        fusion = MultimodalFusion(**model_config.fusion)
        text = jax.ShapeDtypeStruct((1, 1, fusion.text_dim), np.float32)
        style = jax.ShapeDtypeStruct((1, fusion.num_parts, fusion.style_dim), np.float32)
        pose = jax.ShapeDtypeStruct((1, fusion.pose_dim), np.float32)
        fusion_params = jax.eval_shape(fusion.init, rng, text, style, pose)["params"]
        shapes["fusion"] = {"pose_proj": fusion_params["pose_proj"]}
    return nn.unbox(shapes)


def count_params(tree: PyTree) -> int:
    """Number of scalars in a tree of arrays (or shape structs)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
