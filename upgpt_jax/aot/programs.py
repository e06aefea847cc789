"""The programs `upgpt_jax.aot` compiles, built from the trainer's and the sampler's own code.

Each is the real jitted function (`train.step.make_train_step`, `sampling.sampler.jitted_sampler`)
with abstract arguments: ShapeDtypeStructs carrying the shardings the run would use on a mesh of
the target devices. Nothing is allocated, so the 425 M-parameter model fits any host; the devices
may be compile-only TPU devices of a topology this host does not have.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding

from upgpt_jax.diffusion import guidance_branches, guided_eps_fn
from upgpt_jax.flops import latent_size, train_step_flops, unet_forward_flops
from upgpt_jax.models.clip import build_clip_encoders, clip_config, clip_param_shapes
from upgpt_jax.models.upgpt import build_model
from upgpt_jax.sampling.sampler import SamplingSettings, jitted_sampler
from upgpt_jax.sharding import batch_sharding, make_mesh, on_mesh, weight_shardings
from upgpt_jax.train.optimizer import make_optimizer
from upgpt_jax.train.state import abstract_state, with_shardings
from upgpt_jax.train.step import make_train_step

WHAT = ("train", "sample")


@dataclasses.dataclass
class Program:
    """A jitted function, its abstract arguments and what one call does."""

    what: str
    function: Callable[..., Any]
    arguments: tuple[Any, ...]
    mesh: Mesh
    global_batch: int
    model_flops: float  # analytic FLOPs of one call, all chips together (see `describe`)
    describe: str
    # XLA's cost analysis counts a while loop's body once, whatever its trip count. A program with
    # a loop (the sampler's lax.scan over steps) carries its body as a program of its own, so the
    # report can add (trips - 1) x the body's cost.
    loop_body: Program | None = None
    loop_trips: int = 1


def topology_devices(topology: str, num_slices: int = 1) -> list[jax.Device]:
    """Devices to compile for: "local" (this process's devices, any backend) or a TPU topology name
    ("v5e:2x2", "v5p:4x4x4", "v4:2x2x1", "v6e:16x16"), compile-only devices from libtpu (the `tpu`
    extra), which needs no TPU on this host."""
    if topology == "local":
        return list(jax.devices())
    if ":" not in topology:
        raise ValueError(f"--topology {topology!r}: expected 'local' or a TPU topology such as 'v5e:16x16'")
    from jax.experimental import topologies

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: several processes may load libtpu
    # v4 and v5p chips have two TensorCores that their TPU VMs drive as one device (megacore): one
    # JAX device per chip, as a training job sees them. libtpu's default would give one per core.
    kwargs = {"chip_config_name": "megacore" if topology.split(":")[0] in ("v4", "v5p") else "default"}
    kwargs.update({"num_slices": num_slices} if num_slices > 1 else {})
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs).devices)
    except (RuntimeError, ValueError) as error:  # no libtpu, or a name libtpu does not know
        raise ValueError(f"--topology {topology!r}: libtpu cannot describe it ({str(error).splitlines()[0]}); "
                         f"install the TPU extra (pip install -e '.[tpu]') and use names such as v5e:2x2, "
                         f"v5p:2x2x1, v4:2x2x1, v6e:4x4") from None


def _batched(sharding: NamedSharding, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)


def train_features(model_config: ml_collections.ConfigDict, sharding: NamedSharding, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The precomputed-feature batch the train step reads (train.step.FEATURE_KEYS), as the
    benchmarks and the peer anchors measure it: the frozen VAE encoder and CLIP are not in the step."""
    height, width = latent_size(model_config)
    fusion, channels = model_config.fusion, model_config.latent_channels
    return {
        "latent_moments": _batched(sharding, (batch, height, width, 2 * channels), jnp.float32),
        "text_embedding": _batched(sharding, (batch, model_config.clip.max_length, fusion.text_dim), jnp.float32),
        "style_embedding": _batched(sharding, (batch, fusion.num_parts, fusion.style_dim), jnp.float32),
        "person_mask": _batched(sharding, (batch, height, width, 1), jnp.float32),
        "style_present": _batched(sharding, (batch, fusion.num_parts), jnp.bool_),
        "pose": _batched(sharding, (batch, fusion.pose_dim), jnp.float32),
    }


def sampler_inputs(model_config: ml_collections.ConfigDict, sharding: NamedSharding, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    """What sampling.sampler.encode_conditions produces for `batch` people, plus their seeds."""
    height, width = latent_size(model_config)
    clip, parts = model_config.clip, model_config.fusion.num_parts
    return {
        "text_ids": _batched(sharding, (batch, clip.max_length), jnp.int32),
        "styles": _batched(sharding, (batch, parts, clip.image_size, clip.image_size, 3), jnp.float32),
        "style_text_ids": _batched(sharding, (batch, parts, clip.max_length), jnp.int32),
        "style_from_text": _batched(sharding, (batch, parts), jnp.bool_),
        "style_present": _batched(sharding, (batch, parts), jnp.bool_),
        "person_mask": _batched(sharding, (batch, height, width, 1), jnp.float32),
        "pose": _batched(sharding, (batch, model_config.fusion.pose_dim), jnp.float32),
        "seeds": _batched(sharding, (batch,), jnp.uint32),
    }


def build_program(config: ml_collections.ConfigDict, what: str, devices: Sequence[jax.Device],
                  per_chip_batch: int) -> Program:
    """The train step or the sampling function of `config` on a mesh of `devices`, for a global
    batch of `per_chip_batch` x chips (with tensor parallelism, chips of one group share examples)."""
    if what not in WHAT:
        raise ValueError(f"--what must be one of {WHAT}, got {what!r}")
    if per_chip_batch < 1:
        raise ValueError(f"--per_chip_batch must be >= 1, got {per_chip_batch}")
    mesh = make_mesh(config.mesh, devices, config.get("mesh_dcn"))
    batch = per_chip_batch * len(devices)
    model = build_model(config.model)
    with config.unlocked():
        config.train.batch_size = batch
    optimizer = make_optimizer(config.optim, config.train.grad_accum_steps)
    abstract, shardings = abstract_state(model, config, optimizer, mesh)
    if what == "train":
        step = make_train_step(model, config, optimizer, shardings, mesh)
        arguments = (with_shardings(abstract, shardings), train_features(config.model, batch_sharding(mesh, config.axis_rules), batch))
        return Program(what, step, arguments, mesh, batch, float(train_step_flops(config.model)) * batch,
                       "UNet + fusion forward and backward per example (frozen encoders precomputed)")

    settings = SamplingSettings.from_config(config.sampling, batch_size=batch)
    clip_fields = {key: value for key, value in config.model.clip.to_dict().items() if key != "path"}
    clip = build_clip_encoders(clip_config(**clip_fields), jnp.dtype(config.model.dtype))
    clip_shapes = clip_param_shapes(clip)
    clip_params = with_shardings(clip_shapes, weight_shardings(clip_shapes, mesh, config.axis_rules))
    params = with_shardings({**abstract.ema_params, **abstract.frozen_params},
                            {**shardings.ema_params, **shardings.frozen_params})
    function = jitted_sampler(model, clip, config.diffusion, settings, mesh, config.axis_rules)
    branches = len(guidance_branches(dict(settings.guidance)))
    unet_flops = float(unet_forward_flops(config.model)) * branches * batch
    inputs = sampler_inputs(config.model, batch_sharding(mesh, config.axis_rules), batch)
    body = _denoising_step(model, config, mesh, params, inputs, dict(settings.guidance), unet_flops)
    return Program(what, function, (params, clip_params, inputs), mesh, batch, unet_flops * settings.num_steps,
                   f"UNet forwards only: {settings.num_steps} {settings.method} steps x {branches} guidance "
                   f"branches per image (CLIP encoders and VAE decoder not counted)",
                   loop_body=body, loop_trips=settings.num_steps)


def _denoising_step(model: Any, config: ml_collections.ConfigDict, mesh: Mesh, params: Any,
                    inputs: dict[str, jax.ShapeDtypeStruct], scales: dict[str, float], unet_flops: float) -> Program:
    """One guided noise prediction at the sampler's batch: the body of its loop."""
    fusion, sharding = config.model.fusion, inputs["pose"].sharding
    batch, (height, width) = inputs["pose"].shape[0], latent_size(config.model)
    conditions = {
        "text": _batched(sharding, (batch, config.model.clip.max_length, fusion.text_dim), jnp.float32),
        "style": _batched(sharding, (batch, fusion.num_parts, fusion.style_dim), jnp.float32),
        "pose": inputs["pose"], "style_present": inputs["style_present"],
    }
    x = _batched(sharding, (batch, height, width, config.model.latent_channels), jnp.float32)
    t = _batched(sharding, (batch,), jnp.int32)

    def step(params: Any, mask: jax.Array, conditions: dict[str, jax.Array], x: jax.Array, t: jax.Array) -> jax.Array:
        return guided_eps_fn(model, params, mask, conditions, scales)(x, t)

    function = jax.jit(on_mesh(step, mesh, config.axis_rules), out_shardings=sharding)
    return Program("denoising step", function, (params, inputs["person_mask"], conditions, x, t), mesh, batch,
                   unet_flops, "one guided UNet evaluation")
