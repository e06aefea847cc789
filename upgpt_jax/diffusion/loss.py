"""The denoising training objective: eps-prediction MSE, optionally weighted per latent pixel."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from upgpt_jax.diffusion.schedule import NoiseSchedule


def eps_loss(
    model: Any,
    params: Any,
    batch: Mapping[str, jax.Array],
    schedule: NoiseSchedule,
    rng: jax.Array,
    *,
    train: bool = True,
    snr_gamma: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """LDM's `loss_simple`: mean over pixels of w * (eps - eps_theta(x_t, t, c))^2, then over the batch.

    `batch` holds scaled `latents` (B, h, w, 4), `person_mask` (B, h, w, 1), the conditions `text`,
    `style`, `pose` and optionally `style_present`, `drop_text`/`drop_style`/`drop_pose` (see
    `MultimodalFusion`) and `loss_weights` (B, h, w, 1), e.g. a larger weight on the face as in the
    original's data loader. Returns (loss, metrics) with per-example losses for logging.

    `snr_gamma` > 0 weights each example by min(SNR_t, gamma) / SNR_t (Min-SNR-gamma, Hang et
    al. 2023, for eps prediction; SNR_t = abar_t / (1 - abar_t)): the low-noise timesteps, whose
    large eps errors dominate the plain loss but say little about the conditions, count less, so
    the high-noise ones, where text and style decide the colours, get more of each update. 0 is
    LDM's unweighted loss.
    """
    latents = batch["latents"]
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    timesteps = jax.random.randint(t_rng, (latents.shape[0],), 0, schedule.num_timesteps)
    noise = jax.random.normal(noise_rng, latents.shape, jnp.float32)
    noisy = schedule.add_noise(latents.astype(jnp.float32), noise, timesteps)

    masks = {key: batch[key] for key in ("style_present", "drop_text", "drop_style", "drop_pose") if key in batch}

    def predict(module):
        context = module.context(batch["text"], batch["style"], batch["pose"], **masks)
        return module.denoise(noisy, batch["person_mask"], timesteps, context, train=train)

    eps = model.apply({"params": params}, method=predict, rngs={"dropout": dropout_rng})
    squared_error = jnp.square(eps.astype(jnp.float32) - noise)
    if "loss_weights" in batch:
        squared_error = squared_error * batch["loss_weights"].astype(jnp.float32)
    per_example = squared_error.mean(axis=(1, 2, 3))
    if snr_gamma > 0:
        abar = schedule.alphas_cumprod[timesteps]
        snr = abar / (1.0 - abar)
        per_example = per_example * jnp.minimum(snr, snr_gamma) / snr
    return per_example.mean(), {"loss_per_example": per_example, "timesteps": timesteps}
