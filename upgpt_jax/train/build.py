"""Everything a training run builds from its config, built once: mesh, model, frozen encoders,
optimizer, the train state's shapes and shardings, its init, and the stage (its jitted step).

Why once and cached: building jits functions, and jitted functions compile on their first call;
runs whose configs differ only in loop settings (`encoders.LOOP_FIELDS`) or data (a test or a
notebook calling `train` again, training from pixels then from precomputed features) reuse the
same `Parts` and so the same compiled executables.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.train.encoders import Encoders, build_encoders, build_key
from upgpt_jax.train.optimizer import make_optimizer
from upgpt_jax.train.stages import STAGES, Stage
from upgpt_jax.train.state import TrainState, abstract_state, make_init_fn
from upgpt_jax.train.step import TrainStep


@dataclasses.dataclass(frozen=True)
class Parts:
    """The built parts of one configuration (see the module docstring)."""

    encoders: Encoders
    model: UPGPT  # the encoders' model at this run's `model.scale_factor`
    optimizer: optax.GradientTransformation
    abstract: TrainState  # shapes and dtypes of the state
    shardings: TrainState  # where each state leaf lives on the mesh
    init: Callable[[], TrainState]  # a fresh state, created in its shards
    stage: Stage

    @property
    def mesh(self) -> Mesh:
        return self.encoders.mesh

    @property
    def train_step(self) -> TrainStep:
        return self.stage.step


def build(config: ml_collections.ConfigDict) -> Parts:
    """`Parts` of `config`, built once per configuration (`encoders.build_key`) and device list."""
    return _build(build_key(config), tuple(jax.devices()))


@functools.lru_cache(maxsize=4)
def _build(key: ml_collections.FrozenConfigDict, devices: tuple[jax.Device, ...]) -> Parts:
    config = ml_collections.ConfigDict(key)
    encoders = build_encoders(config)  # the mesh, the model and the frozen encoders
    model = encoders.model.clone(scale_factor=config.model.scale_factor)
    optimizer = make_optimizer(config.optim, config.train.grad_accum_steps)
    abstract, shardings = abstract_state(model, config, optimizer, encoders.mesh)
    return Parts(
        encoders=encoders,
        model=model,
        optimizer=optimizer,
        abstract=abstract,
        shardings=shardings,
        init=make_init_fn(model, config, optimizer, shardings),
        stage=STAGES[config.train.stage](config, model, optimizer, shardings, encoders),
    )
