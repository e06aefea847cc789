"""The training stages (`config.train.stage`) as objects, so that the loop is the same for each.

A `Stage` knows its trainable and frozen parameter-tree parts, its jitted step, which of a host
batch's arrays the step reads, how a global batch becomes the step's input, and which of the step's
metrics are logged beside the common ones (loss, lr, grad_norm, skipped). The loop asks the stage
and never branches on its name or on the input kind (pixels or precomputed features):
- "vae": the autoencoder alone, from the images (upgpt_jax.train.vae_step);
- "diffusion": UNet + fusion from the frozen encoders' features, which the stage computes from a
  pixel batch, or takes as they are from a batch of precomputed features (upgpt_jax.train.step).
`STAGES` maps each name to the function that builds its stage (called once, by upgpt_jax.train.build).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import optax

from upgpt_jax.distributed import compile_then_meet
from upgpt_jax.flops import train_step_flops
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.rundir.shardings import stage_parts
from upgpt_jax.train.encoders import Encoders
from upgpt_jax.train.state import TrainState
from upgpt_jax.train.step import FEATURE_KEYS, TrainStep, make_train_step
from upgpt_jax.train.vae_step import lpips_for_config, make_vae_train_step


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage, built for one configuration."""

    name: str
    step: TrainStep  # step(state, step_input) -> (state, metrics); donates the state
    host_keys: tuple[str, ...] | None  # the host batch's arrays the step reads (None: all of them)
    metrics: tuple[str, ...]  # the step's metrics logged beside loss, lr, grad_norm and skipped
    flops_per_image: float | None  # model FLOPs of one training example (None: not counted)
    previews: bool  # whether sample grids (train.sample_every) can show its progress
    encoders: Encoders | None = None  # the frozen encoders between a pixel batch and the step

    @property
    def trainable(self) -> tuple[str, ...]:
        return stage_parts(self.name)[0]

    @property
    def frozen(self) -> tuple[str, ...]:
        return stage_parts(self.name)[1]

    def host_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The arrays of this host's `batch` that go to the devices."""
        return dict(batch) if self.host_keys is None else {key: batch[key] for key in self.host_keys}

    def step_input(self, frozen_params: Any, batch: Mapping[str, jax.Array],
                   compile_label: str | None = None) -> Mapping[str, jax.Array]:
        """The step's input for global `batch`: the batch itself, or with encoders and a pixel batch its
        features under the frozen VAE (`frozen_params["vae"]`) and CLIP (dispatched, not awaited).
        With `compile_label`, every process compiles the encoders and meets first (the first batch)."""
        if self.encoders is None or FEATURE_KEYS[0] in batch:  # the step reads the batch as it is
            return batch
        encode, clip_params = self.encoders.encode, self.encoders.clip_params
        if compile_label is not None:
            compile_then_meet(encode, compile_label, frozen_params, clip_params, batch)
        return encode(frozen_params, clip_params, batch)


def vae_stage(config: ml_collections.ConfigDict, model: UPGPT, optimizer: optax.GradientTransformation,
              shardings: TrainState, encoders: Encoders) -> Stage:
    """The autoencoder from the images alone (LPIPS term when config.train.vae names its weights)."""
    lpips = lpips_for_config(config.train.vae)
    step = make_vae_train_step(model, config, optimizer, shardings, encoders.mesh, lpips)
    host_keys = ("image", "person_mask") if config.train.vae.get("person_weight", 0.0) else ("image",)
    return Stage(name="vae", step=step, host_keys=host_keys,
                 metrics=("rec_l1", "kl") + (("lpips",) if lpips is not None else ()),
                 flops_per_image=None, previews=False)


def diffusion_stage(config: ml_collections.ConfigDict, model: UPGPT, optimizer: optax.GradientTransformation,
                    shardings: TrainState, encoders: Encoders) -> Stage:
    """UNet + fusion from the frozen encoders' features (computed here from pixels, or precomputed)."""
    step = make_train_step(model, config, optimizer, shardings, encoders.mesh)
    return Stage(name="diffusion", step=step, host_keys=None, metrics=(),
                 flops_per_image=train_step_flops(config.model), previews=True, encoders=encoders)


StageBuilder = Callable[[ml_collections.ConfigDict, UPGPT, optax.GradientTransformation, TrainState, Encoders], Stage]
STAGES: dict[str, StageBuilder] = {"vae": vae_stage, "diffusion": diffusion_stage}
