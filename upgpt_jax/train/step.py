"""One jitted training step of the diffusion stage, and the jitted frozen encoders that feed it.

The step samples the VAE posterior (so precomputed moments and on-the-fly encoding train
alike), draws the condition-dropout masks for classifier-free guidance, takes the eps-loss
gradient of the trainable params (compute in `config.model.dtype`, master weights float32),
and applies AdamW and the EMA. A non-finite loss or gradient norm, or an update larger than
`train.max_update_ratio` x the weights, keeps params, optimizer state and EMA as they were and
counts the step in `state.skipped`; the step counter and RNG move on, so the next batch is used next.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from upgpt_jax.diffusion import NoiseSchedule, eps_loss
from upgpt_jax.models.clip import ClipEncoders, encode_style_images, encode_text_tokens
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.models.vae import DiagonalGaussian
from upgpt_jax.sharding import batch_sharding, on_mesh
from upgpt_jax.train.optimizer import current_learning_rate
from upgpt_jax.train.state import MAX_UPDATE_RATIO, TrainState, apply_gradients, replicated

TrainStep = Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]
FEATURE_KEYS = ("latent_moments", "text_embedding", "style_embedding", "person_mask", "style_present", "pose")


def condition_dropout(rng: jax.Array, batch_size: int, probabilities: Mapping[str, float]) -> dict[str, jax.Array]:
    """Independent per-example Bernoulli masks drop_text / drop_style / drop_pose."""
    keys = jax.random.split(rng, len(probabilities))
    return {f"drop_{name}": jax.random.bernoulli(key, float(probability), (batch_size,))
            for key, (name, probability) in zip(keys, sorted(probabilities.items()))}


def make_encode_fn(model: UPGPT, clip: ClipEncoders, mesh: Mesh, rules: Any) -> Callable[..., dict[str, jax.Array]]:
    """Pixel batch -> feature batch (FEATURE_KEYS) with the frozen VAE encoder and CLIP, jitted.

    Returns `encode(frozen_params, clip_params, batch)`; the batch is the pixel transform's
    (image, person_mask, text_ids, styles, style_present, pose, and loss_weights where the data gives
    them, passed through) as global arrays on `mesh`, the features come out batch-sharded by the
    axis `rules` (config.axis_rules).
    """
    sharding = batch_sharding(mesh, rules)

    def encode(frozen_params: Any, clip_params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        posterior = model.apply({"params": frozen_params}, batch["image"], method=UPGPT.posterior)
        return {
            "latent_moments": jnp.concatenate([posterior.mean, posterior.logvar], axis=-1),
            "text_embedding": encode_text_tokens(clip, clip_params, batch["text_ids"]).astype(jnp.float32),
            "style_embedding": encode_style_images(clip, clip_params, batch["styles"]).astype(jnp.float32),
            "person_mask": batch["person_mask"],
            "style_present": batch["style_present"],
            "pose": batch["pose"],
            **({"loss_weights": batch["loss_weights"]} if "loss_weights" in batch else {}),
        }

    return jax.jit(on_mesh(encode, mesh, rules), out_shardings=sharding)


def make_train_step(model: UPGPT, config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                    state_shardings: TrainState, mesh: Mesh) -> TrainStep:
    """`step(state, features) -> (state, metrics)`, jitted with explicit shardings (features and
    activations placed by config.axis_rules); the input state is donated (its buffers are reused
    for the output: do not touch it after the call). Features with `loss_weights` (B, h, w, 1)
    (config data.part_loss_weights) weight the eps error per latent pixel (diffusion.loss)."""
    schedule = NoiseSchedule.from_config(config.diffusion)
    dropout_probabilities = dict(config.train.cond_dropout)
    snr_gamma = float(config.diffusion.get("snr_gamma", 0.0))  # absent in configs saved before it existed
    ema_decay = float(config.train.ema_decay)
    max_update_ratio = float(config.train.get("max_update_ratio", MAX_UPDATE_RATIO))
    grad_accum_steps = int(config.train.grad_accum_steps)

    def step(state: TrainState, features: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, posterior_rng, dropout_rng, loss_rng = jax.random.split(state.rng, 4)
        posterior = DiagonalGaussian.from_moments(features["latent_moments"])
        batch = {
            "latents": posterior.sample(posterior_rng) * model.scale_factor,
            "person_mask": features["person_mask"],
            "text": features["text_embedding"],
            "style": features["style_embedding"],
            "pose": features["pose"],
            "style_present": features["style_present"],
            **condition_dropout(dropout_rng, features["pose"].shape[0], dropout_probabilities),
            **({"loss_weights": features["loss_weights"]} if "loss_weights" in features else {}),
        }

        def loss_fn(params: Any) -> jax.Array:
            loss, _ = eps_loss(model, {**params, **state.frozen_params}, batch, schedule, loss_rng,
                               snr_gamma=snr_gamma)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        new_state, finite, grad_norm = apply_gradients(state, grads, loss, rng, optimizer, ema_decay,
                                                         max_update_ratio)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": current_learning_rate(config.optim, state.opt_state, grad_accum_steps),
            "skipped": new_state.skipped,
            "finite": finite,
        }
        return new_state, metrics

    feature_sharding = batch_sharding(mesh, config.axis_rules)
    return jax.jit(
        on_mesh(step, mesh, config.axis_rules),
        in_shardings=(state_shardings, feature_sharding),  # every feature (and loss_weights) batch-sharded
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
