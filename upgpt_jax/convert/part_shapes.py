"""The shapes and sizes of converted parameter trees: what an import must produce for a config.

Here, not beside the folder I/O (`upgpt_jax.weights.params_io`), because it needs the model code:
the converter sits above `upgpt_jax.models`, the weight files below it (CLIP loads through them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from upgpt_jax.models.fusion import MultimodalFusion
from upgpt_jax.models.unet import UNet
from upgpt_jax.models.vae import AutoencoderKL
from upgpt_jax.weights.params_io import PARTS

PyTree = Any


def abstract_params(model_config: Any, parts: Sequence[str] = PARTS) -> dict[str, PyTree]:
    """The shapes (jax.ShapeDtypeStruct, unboxed) of the converted tree for `config.model`.

    Of the fusion only the pose projection has released weights (its null tokens and the
    "learned" mode's layers start from their initialisation).
    """
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
