"""Evaluation batches on the device mesh: split over the batch axes of the axis rules, like training.

The metric jits (SSIM, LPIPS, Inception features, VAE reconstructions, the denoiser's errors) take
whatever shardings their inputs carry, so placing each batch here is what runs them on every
device. Batches are padded with copies of their last row up to a multiple of the batch shards
(callers drop the padding rows), so a metric does not depend on the mesh. The metric networks'
weights (LPIPS-VGG ~15 M, FID Inception ~24 M parameters) are replicated: they fit any device and
need no gathers.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from upgpt_jax.config_base import DEFAULT_AXIS_RULES
from upgpt_jax.distributed import host_to_global
from upgpt_jax.sharding import batch_sharding, batch_shards, make_mesh, pad_batch


def eval_mesh(mesh: Mesh | None = None, rules: Any = None) -> tuple[Mesh, Any]:
    """(mesh, rules), by default every device data-parallel under DEFAULT_AXIS_RULES (folder
    metrics have no model config to take a mesh from)."""
    return (make_mesh({"data": -1}) if mesh is None else mesh), (DEFAULT_AXIS_RULES if rules is None else rules)


def padded_size(batch_size: int, mesh: Mesh, rules: Any) -> int:
    """`batch_size` rounded up to a multiple of the mesh's batch shards."""
    shards = batch_shards(mesh, rules)
    return -(-int(batch_size) // shards) * shards


def place_batch(arrays: Mapping[str, np.ndarray], size: int, mesh: Mesh, rules: Any) -> dict[str, jax.Array]:
    """Host arrays (same rows each) padded to `size` rows and split over the batch axes."""
    return host_to_global({name: pad_batch(np.asarray(value), size) for name, value in arrays.items()},
                          batch_sharding(mesh, rules))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Weights copied whole onto every device of `mesh`."""
    return host_to_global(tree, NamedSharding(mesh, PartitionSpec()))
