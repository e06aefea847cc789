"""The training state and its sharded initialisation.

The state holds what a resumed run needs to continue bit for bit: the step, the trainable
params (UNet + fusion) in float32, their optimizer state and EMA, the frozen VAE params (never
updated, kept so that a checkpoint alone can decode samples), the RNG and the count of skipped
(non-finite) steps. Its shardings come from the modules' logical axis names and the config's
axis rules (upgpt_jax.rundir.shardings, which readers of a run share), so params, EMA and
optimizer moments are sharded alike (FSDP when the rules map axes to "fsdp"). In the VAE stage
(config.train.stage = "vae") the autoencoder is the trainable part and nothing is frozen.
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
from upgpt_jax.rundir.shardings import stage_parts, state_shardings
# with_shardings: imported from here by upgpt_jax/aot and benchmarks/, which import train.state.
from upgpt_jax.rundir.shardings import with_shardings  # noqa: F401
from upgpt_jax.train.optimizer import ema_decay_at, ema_update

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


def _vae_only(module: UPGPT, images: jax.Array) -> Any:
    """Touches the autoencoder alone (the VAE stage's `init` method)."""
    return module.vae(images)


def init_vae_boxed(model: UPGPT, model_config: ml_collections.ConfigDict, seed: int) -> Any:
    """The autoencoder's params alone, boxed, without building the UNet or fusion: the same values as
    the whole model's init with `seed` (flax derives each submodule's keys from its name)."""
    # "unsafe_rbg" for the init draws: threefry doubles the compile time (see models.upgpt.init_params).
    key = jax.random.key(seed, impl="unsafe_rbg")
    return model.init(key, example_inputs(model_config)["images"], method=_vae_only)["params"]["vae"]


def _init_boxed(model: UPGPT, model_config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                seed: int, train_seed: int, stage: str) -> TrainState:
    """The initial state with params still boxed in their logical axis names (optax and the EMA
    copy map through the boxes, so the optimizer moments carry the same names)."""
    trainable, frozen = stage_parts(stage)
    if set(trainable + frozen) == {"vae"}:
        variables = {"vae": init_vae_boxed(model, model_config, seed)}
    else:
        # "unsafe_rbg" for the init draws: threefry doubles the compile time (see models.upgpt.init_params).
        variables = model.init(jax.random.key(seed, impl="unsafe_rbg"), **example_inputs(model_config))["params"]
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
