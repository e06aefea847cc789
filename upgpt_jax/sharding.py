"""The device mesh and the batch sharding every entry point uses.

The mesh has three axes (config `mesh`: data, fsdp, tensor). The batch dimension is split over
both "data" and "fsdp" (the logical "batch" axis of DEFAULT_AXIS_RULES), so FSDP replicas also
see different examples; "tensor" replicas see the same ones.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes in MESH_AXES order; one axis may be -1 and takes the devices left over."""
    unknown = set(mesh_config) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh config has unknown axes {sorted(unknown)}; expected {MESH_AXES}")
    sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
    auto = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
    if len(auto) > 1 or any(size == 0 or size < -1 for size in sizes):
        raise ValueError(f"mesh config {dict(zip(MESH_AXES, sizes))}: sizes must be positive, at most one -1")
    fixed = int(np.prod([size for size in sizes if size != -1]))
    if auto:
        if num_devices % fixed:
            raise ValueError(f"mesh config {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                             f"divisible by the fixed axes' product {fixed}")
        sizes[MESH_AXES.index(auto[0])] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"mesh config {dict(zip(MESH_AXES, sizes))} needs {fixed} devices, there are {num_devices}")
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes MESH_AXES over `devices` (default: all), sized by `mesh_config`.

    Built with `Mesh(...)` directly: its axes are of the Auto type on every supported JAX,
    whereas `jax.make_mesh` defaults to Explicit axes on 0.10/0.11 (which `jax.image.resize`
    inside the UNet cannot trace under).
    """
    devices = np.asarray(jax.devices() if devices is None else list(devices), dtype=object)
    shape = mesh_shape(dict(mesh_config), devices.size)
    return Mesh(devices.reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over BATCH_AXES, every other dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row of `batch` up to `size` rows: a partial last batch keeps the compiled
    shape (one compilation); callers drop the padding rows from the results."""
    missing = size - len(batch)
    return batch if missing <= 0 else np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])
