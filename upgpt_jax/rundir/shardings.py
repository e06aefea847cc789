"""Which parts of the parameter tree a training stage holds, and where they live on a mesh.

The train state's shardings come from the modules' logical axis names and the config's axis
rules. Everything that places a run's weights (the trainer's state, a checkpoint restored for
sampling or export, an initial VAE, converted files) asks here, so they land alike.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding

from upgpt_jax.models.upgpt import UPGPT, example_inputs
from upgpt_jax.sharding import fit_spec, normalize_rules

TRAINABLE = ("unet", "fusion")
FROZEN = ("vae", "condition_stats")  # condition_stats: only with model.standardize_conditions
# (trainable, frozen) parts of each training stage (config.train.stage). The VAE stage trains the
# autoencoder alone and holds nothing else (the UNet and fusion are neither needed nor initialised).
STAGE_PARTS = {"diffusion": (TRAINABLE, FROZEN), "vae": (("vae",), ())}


def stage_parts(stage: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(trainable, frozen) parameter-tree parts of training stage `stage`."""
    if stage not in STAGE_PARTS:
        raise ValueError(f"train.stage must be one of {sorted(STAGE_PARTS)}, got {stage!r}")
    return STAGE_PARTS[stage]


def state_shardings(abstract_boxed_state: Any, mesh: Mesh, axis_rules: Any) -> Any:
    """NamedShardings of every state leaf: logical specs (unnamed leaves replicated) -> mesh axes.

    A dimension the rules shard but whose size the mesh axes do not divide (e.g. the VAE's 3 RGB
    output channels over fsdp=4) is replicated instead.
    """
    logical_specs = nn.get_partition_spec(abstract_boxed_state)
    shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, normalize_rules(axis_rules))
    return jax.tree.map(lambda sharding, leaf: NamedSharding(mesh, fit_spec(sharding.spec, leaf.shape, mesh)),
                        shardings, nn.unbox(abstract_boxed_state))


def abstract_params(model: UPGPT, model_config: ml_collections.ConfigDict, mesh: Mesh,
                    axis_rules: Any) -> tuple[dict, dict]:
    """(shapes, NamedShardings) of every parameter of `model` ({"unet", "vae", "fusion", ...}), the
    shardings those the train state gives them by their logical names: for weights that arrive from
    elsewhere (converted files, checkpoints, an initial VAE). Nothing is computed."""
    boxed = jax.eval_shape(model.init, jax.random.key(0), **example_inputs(model_config))["params"]
    return nn.unbox(boxed), state_shardings(boxed, mesh, axis_rules)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that carry their target sharding (what orbax restores onto)."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract, shardings)
