"""The training state and its sharded initialisation.

The state holds what a resumed run needs to continue bit for bit: the step, the trainable
params (UNet + fusion) in float32, their optimizer state and EMA, the frozen VAE params (never
updated, kept so that a checkpoint alone can decode samples), the RNG and the count of skipped
(non-finite) steps. Its shardings come from the modules' logical axis names and the config's
axis rules, so params, EMA and optimizer moments are sharded alike (FSDP when the rules map
axes to "fsdp"). In the VAE stage (config.train.stage = "vae") the autoencoder is the trainable
part and nothing is frozen.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from upgpt_jax.models.upgpt import UPGPT, example_inputs
from upgpt_jax.sharding import fit_spec, normalize_rules
from upgpt_jax.train.optimizer import ema_decay_at, ema_update

TRAINABLE = ("unet", "fusion")
FROZEN = ("vae", "condition_stats")  # condition_stats: only with model.standardize_conditions
# (trainable, frozen) parts of each training stage (config.train.stage). The VAE stage trains the
# autoencoder alone and holds nothing else (the UNet and fusion are neither needed nor initialised).
STAGE_PARTS = {"diffusion": (TRAINABLE, FROZEN), "vae": (("vae",), ())}
# config.train.max_update_ratio's default, for configs saved before the field existed.
MAX_UPDATE_RATIO = 1.0


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: train steps taken (skipped ones included)
    params: Any  # {"unet", "fusion"} ({"vae"} in the VAE stage), float32 master weights
    opt_state: Any
    ema_params: Any
    frozen_params: Any  # {"vae"} (+ "condition_stats"; {} in the VAE stage)
    rng: jax.Array  # uint32[2] raw key (checkpointable as a plain array)
    skipped: jax.Array  # int32: steps whose update was skipped for a non-finite loss or gradient


def stage_parts(stage: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(trainable, frozen) parameter-tree parts of training stage `stage`."""
    if stage not in STAGE_PARTS:
        raise ValueError(f"train.stage must be one of {sorted(STAGE_PARTS)}, got {stage!r}")
    return STAGE_PARTS[stage]


def _vae_only(module: UPGPT, images: jax.Array) -> Any:
    """Touches the autoencoder alone (the VAE stage's `init` method)."""
    return module.vae(images)


def _init_boxed(model: UPGPT, model_config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                seed: int, train_seed: int, stage: str) -> TrainState:
    """The initial state with params still boxed in their logical axis names (optax and the EMA
    copy map through the boxes, so the optimizer moments carry the same names)."""
    trainable, frozen = stage_parts(stage)
    # "unsafe_rbg" for the init draws: threefry doubles the compile time (see models.upgpt.init_params).
    key, inputs = jax.random.key(seed, impl="unsafe_rbg"), example_inputs(model_config)
    if set(trainable + frozen) == {"vae"}:
        variables = model.init(key, inputs["images"], method=_vae_only)["params"]
    else:
        variables = model.init(key, **inputs)["params"]
    params = {name: variables[name] for name in trainable}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        frozen_params={name: variables[name] for name in frozen if name in variables},
        rng=jax.random.PRNGKey(train_seed),
        skipped=jnp.zeros((), jnp.int32),
    )


def state_shardings(abstract_boxed_state: TrainState, mesh: Mesh, axis_rules: Any) -> TrainState:
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


def abstract_state(model: UPGPT, config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                   mesh: Mesh) -> tuple[TrainState, TrainState]:
    """(shapes of the unboxed state, its shardings) without computing anything."""
    boxed = jax.eval_shape(lambda: _init_boxed(model, config.model, optimizer, config.seed, config.train.seed,
                                               config.train.stage))
    return nn.unbox(boxed), state_shardings(boxed, mesh, config.axis_rules)


def make_init_fn(model: UPGPT, config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                 shardings: TrainState) -> Callable[[], TrainState]:
    """`init() -> TrainState`, jitted to create the state directly in its shards (nothing is
    materialised whole on one device)."""
    return jax.jit(lambda: nn.unbox(_init_boxed(model, config.model, optimizer, config.seed, config.train.seed,
                                                config.train.stage)),
                   out_shardings=shardings)


def with_shardings(abstract: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs that carry their target sharding (what orbax restores onto)."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def apply_gradients(state: TrainState, grads: Any, loss: jax.Array, rng: jax.Array,
                    optimizer: optax.GradientTransformation, ema_decay: float,
                    max_update_ratio: float = MAX_UPDATE_RATIO) -> tuple[TrainState, jax.Array, jax.Array]:
    """The optimizer and EMA update of one step, guarded: a non-finite loss or gradient norm, or an
    update whose global norm exceeds `max_update_ratio` x the params' (a finite loss and gradient
    can still blow the weights up: at a learning rate of 1e12 one step takes them from 1 to 4e11),
    keeps params, optimizer state and EMA as they were and counts the step in `skipped`; the step
    counter and `rng` (the state's next key) move on either way. So a checkpoint, which is only
    written after an applied step, never holds weights a bad update made. Returns (state, applied,
    grad norm)."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    # NaN/inf compare False: a non-finite update is refused here too.
    sane = optax.tree.norm(updates) <= max_update_ratio * optax.tree.norm(state.params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & sane
    params = optax.apply_updates(state.params, updates)
    ema_params = ema_update(state.ema_params, params, ema_decay_at(ema_decay, state.step + 1))
    keep_if_bad = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_bad(params, state.params),
        opt_state=keep_if_bad(opt_state, state.opt_state),
        ema_params=keep_if_bad(ema_params, state.ema_params),
        rng=rng,
        skipped=state.skipped + (~finite).astype(jnp.int32),
    )
    return new_state, finite, grad_norm
