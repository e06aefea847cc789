"""The device mesh, and how the config's axis rules place batches, activations and weights on it.

The mesh has three axes (config `mesh`: data, fsdp, tensor). Where anything lives is stated once,
in the config's `axis_rules` (logical name -> mesh axes, see config_base.DEFAULT_AXIS_RULES):
- the batch dimension of inputs AND activations follows the logical "batch" rule (by default
  ("data", "fsdp"), so FSDP replicas also see different examples and "tensor" replicas the same);
- parameters follow the logical names they were created with (models/layers.py);
- activations inside the model are constrained at block boundaries (`constrain`, called by the
  modules) while a jitted function traces under `activation_sharding(mesh, rules)`; outside that
  context the constraints are no-ops, so the modules run unchanged on one device.

Any dimension whose size the named mesh axes do not divide is left unsharded (`fit_spec`): a
rule states the preference, not a requirement (e.g. 3 RGB channels over fsdp=4).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
# Across slices (DCN, slow links) only data parallelism by default: its one gradient all-reduce per
# step tolerates the slow network, FSDP's per-layer gathers and tensor parallelism's do not.
DEFAULT_DCN_MESH: dict[str, int] = {"data": -1, "fsdp": 1, "tensor": 1}

Rules = tuple[tuple[str, Any], ...]
_log = logging.getLogger(__name__)


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


def num_slices(devices: Sequence[Any]) -> int:
    """How many slices (ICI islands joined by DCN) `devices` span; 1 where devices carry no
    `slice_index` (CPU, GPU)."""
    return len({getattr(device, "slice_index", 0) for device in devices})


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None,
              dcn_config: Mapping[str, int] | None = None) -> Mesh:
    """A mesh with axes MESH_AXES over `devices` (default: all), sized by `mesh_config` (the whole
    mesh); `dcn_config` (default DEFAULT_DCN_MESH) says how many slices each axis spans when the
    devices span several. Devices are ordered by `device_grid`.

    Built with `Mesh(...)`: its axes are of the Auto type on every supported JAX, whereas
    `jax.make_mesh` defaults to Explicit axes on 0.10/0.11 (which `jax.image.resize` inside the
    UNet cannot trace under).
    """
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(device_grid(mesh_config, devices, dcn_config), MESH_AXES)


def device_grid(mesh_config: Mapping[str, int], devices: Sequence[Any],
                dcn_config: Mapping[str, int] | None = None) -> np.ndarray:
    """`devices` as an array of the mesh's shape (MESH_AXES order), in mesh_utils' order.

    mesh_utils is topology-aware on TPU (neighbouring mesh coordinates are neighbouring chips) and
    joins slices with `create_hybrid_device_mesh`, so the axes `dcn_config` spreads over slices are
    the only ones whose collectives cross the slow links; devices may be real ones or a compile-only
    TPU topology's. Where mesh_utils cannot lay one slice out (an odd device set), the devices are
    reshaped in the order given.
    """
    shape = mesh_shape(dict(mesh_config), len(devices))
    slices = num_slices(devices)
    try:
        if slices > 1:
            dcn = mesh_shape(dict(DEFAULT_DCN_MESH if dcn_config is None else dcn_config), slices)
            if any(size % across for size, across in zip(shape, dcn)):
                raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} cannot be split into "
                                 f"{dict(zip(MESH_AXES, dcn))} slices per axis")
            ici = tuple(size // across for size, across in zip(shape, dcn))
            ordered = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
        else:
            ordered = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError) as error:
        if slices > 1:  # a reshape would put slow DCN links inside FSDP/tensor groups: refuse
            raise
        _log.warning("mesh_utils cannot lay out %s over these %d devices (%s); using their given order",
                     dict(zip(MESH_AXES, shape)), len(devices), error)
        ordered = np.asarray(devices, dtype=object).reshape(shape)
    return np.asarray(ordered, dtype=object).reshape(shape)


# --- logical names -> mesh axes ---------------------------------------------------------------


def normalize_rules(rules: Any) -> Rules:
    """The config's axis rules as hashable tuples (JSON and ConfigDicts turn tuples into lists)."""
    def axes(value: Any) -> Any:
        return value if value is None or isinstance(value, str) else tuple(value)

    return tuple((str(name), axes(value)) for name, value in rules)


def _names(axes: Any) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """`spec` with every dimension the mesh axes do not divide left unsharded."""
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    return PartitionSpec(*(axes if size % math.prod(mesh.shape[name] for name in _names(axes)) == 0 else None
                           for size, axes in zip(shape, entries)))


def logical_sharding(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Any) -> NamedSharding:
    """NamedSharding of an array of `shape` whose dimensions carry logical `names` (flax's rule
    semantics: first matching rule whose mesh axes are still free), indivisible dimensions unsharded."""
    return NamedSharding(mesh, fit_spec(nn.logical_to_mesh_axes(tuple(names), normalize_rules(rules)), shape, mesh))


def batch_axes(rules: Any) -> tuple[str, ...]:
    """The mesh axes the logical "batch" rule splits the batch dimension over."""
    return _names(nn.logical_to_mesh_axes(("batch",), normalize_rules(rules))[0])


def batch_shards(mesh: Mesh, rules: Any) -> int:
    """How many pieces the batch dimension is split into on `mesh` (global batches must divide)."""
    return math.prod(mesh.shape[axis] for axis in batch_axes(rules))


def batch_sharding(mesh: Mesh, rules: Any) -> NamedSharding:
    """Leading (batch) dimension split as the rules' "batch" entry says, every other dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def weight_shardings(params: Any, mesh: Mesh, rules: Any) -> Any:
    """Shardings of weights that carry no logical names (transformers' CLIP modules): each leaf of
    rank >= 2 has its largest dimension named "embed", the logical axis the rules shard weights
    over (FSDP), when the mesh axes divide it; vectors and scalars are replicated. Frozen encoders
    thus cost 1/fsdp of their memory per device; XLA gathers each weight where it is used."""
    def sharding(leaf: Any) -> NamedSharding:
        shape = np.shape(leaf)
        names: list[str | None] = [None] * len(shape)
        if len(shape) >= 2:
            names[int(np.argmax(shape))] = "embed"
        return logical_sharding(names, shape, mesh, rules)

    return jax.tree.map(sharding, params)


# --- activation constraints -------------------------------------------------------------------

_ACTIVATIONS = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Any) -> Iterator[None]:
    """While active (i.e. while a function traces), `constrain` pins activations to `mesh` by `rules`."""
    previous = getattr(_ACTIVATIONS, "placement", None)
    _ACTIVATIONS.placement = (mesh, normalize_rules(rules))
    try:
        yield
    finally:
        _ACTIVATIONS.placement = previous


def on_mesh(function: Callable[..., Any], mesh: Mesh, rules: Any) -> Callable[..., Any]:
    """`function` tracing under `activation_sharding(mesh, rules)`: wrap what is handed to jax.jit."""
    @functools.wraps(function)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with activation_sharding(mesh, rules):
            return function(*args, **kwargs)

    return traced


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """A sharding constraint on activation `x` by the logical `names` of its dimensions, under the
    active `activation_sharding`; unchanged outside it, or when a name has no rule (configs saved
    before the activation names existed keep XLA's own choice rather than replicate)."""
    placement = getattr(_ACTIVATIONS, "placement", None)
    if placement is None:
        return x
    mesh, rules = placement
    if mesh.size == 1:  # nothing to place: spare the compiler the annotations
        return x
    known = {name for name, _ in rules}
    if any(name is not None and name not in known for name in names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_sharding(names, x.shape, mesh, rules))


def map_shards(function: Callable[..., jax.Array], names: Sequence[str | None], *arrays: jax.Array) -> jax.Array:
    """`function` applied to each device's shard of `arrays` (all laid out by the logical `names`,
    as is its output) under the active `activation_sharding`; on the whole arrays outside it.

    For kernels XLA cannot partition itself (Pallas calls): they see only their local block."""
    placement = getattr(_ACTIVATIONS, "placement", None)
    if placement is None or placement[0].size == 1:
        return function(*arrays)
    mesh, rules = placement
    spec = logical_sharding(names, arrays[0].shape, mesh, rules).spec
    return jax.shard_map(function, mesh=mesh, in_specs=(spec,) * len(arrays), out_specs=spec,
                         check_vma=False)(*arrays)


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Repeat the last row of `batch` up to `size` rows: a partial last batch keeps the compiled
    shape (one compilation); callers drop the padding rows from the results."""
    missing = size - len(batch)
    return batch if missing <= 0 else np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])
