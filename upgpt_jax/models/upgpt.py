"""UPGPT: the trainable latent-diffusion model (UNet + fusion) with its frozen KL autoencoder.

One linen module so that one parameter tree {"unet", "vae", "fusion"} (and "condition_stats" with
`model.standardize_conditions`) describes the model, one
set of logical-axis rules shards it, and one checkpoint holds it. The frozen CLIP encoders live
beside it (`upgpt_jax.models.clip`): their outputs are inputs here, so a training run can feed
precomputed CLIP embeddings instead of re-encoding the conditions at every step.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from upgpt_jax.models.fusion import ConditionStandardizer, MultimodalFusion
from upgpt_jax.models.unet import UNet
from upgpt_jax.models.vae import AutoencoderKL, DiagonalGaussian


class UPGPT(nn.Module):
    """Denoises person latents given a person mask and the fused text/style/pose context."""

    unet_config: Mapping[str, Any]
    vae_config: Mapping[str, Any]
    fusion_config: Mapping[str, Any]
    scale_factor: float = 0.18215
    standardize_conditions: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.unet = UNet(**self.unet_config, **precision)
        self.vae = AutoencoderKL(**self.vae_config, **precision)
        self.fusion = MultimodalFusion(**self.fusion_config, **precision)
        if self.standardize_conditions:  # a frozen part "condition_stats" (see ConditionStandardizer)
            self.condition_stats = ConditionStandardizer(param_dtype=self.param_dtype)

    def posterior(self, images: jax.Array) -> DiagonalGaussian:
        """The VAE posterior of images in [-1, 1] (B, H, W, 3), unscaled."""
        return self.vae.encode(images)

    def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Images in [-1, 1] -> scaled latents: a posterior sample with `rng`, its mean without."""
        posterior = self.posterior(images)
        latents = posterior.mode() if rng is None else posterior.sample(rng)
        return latents * self.scale_factor

    def decode(self, latents: jax.Array) -> jax.Array:
        """Scaled latents (B, h, w, 4) -> images in about [-1, 1] (B, 8h, 8w, 3)."""
        return self.vae.decode(latents / self.scale_factor)

    def context(self, text: jax.Array, style: jax.Array, pose: jax.Array, **masks: jax.Array | None) -> jax.Array:
        """The UNet's cross-attention context; see `MultimodalFusion` for the inputs and masks."""
        if self.standardize_conditions:
            text, style = self.condition_stats(text, style)
        return self.fusion(text, style, pose, **masks)

    def denoise(self, noisy_latents: jax.Array, person_mask: jax.Array, timesteps: jax.Array,
                context: jax.Array, train: bool = False) -> jax.Array:
        """Predicted noise for latents (B, h, w, 4) with the person mask (B, h, w, 1) as a 5th channel."""
        if person_mask.shape[:3] != noisy_latents.shape[:3] or person_mask.shape[-1] != 1:
            raise ValueError(f"person_mask must be (B, h, w, 1) at latent resolution "
                             f"{noisy_latents.shape[:3]}, got {person_mask.shape}")
        sample = jnp.concatenate([noisy_latents, person_mask.astype(noisy_latents.dtype)], axis=-1)
        return self.unet(sample, timesteps, context, train=train)

    def __call__(self, images: jax.Array, person_mask: jax.Array, timesteps: jax.Array, text: jax.Array,
                 style: jax.Array, pose: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Touches every sub-module (for `init`): returns (predicted noise, reconstruction)."""
        latents = self.encode(images)
        eps = self.denoise(latents, person_mask, timesteps, self.context(text, style, pose))
        return eps, self.decode(latents)


def build_model(model_config: ml_collections.ConfigDict) -> UPGPT:
    """The UPGPT module described by `config.model`."""
    return UPGPT(
        unet_config=_plain(model_config.unet),
        vae_config=_plain(model_config.vae),
        fusion_config=_plain(model_config.fusion),
        scale_factor=model_config.scale_factor,
        standardize_conditions=model_config.get("standardize_conditions", False),  # absent in older runs
        dtype=jnp.dtype(model_config.dtype),
        param_dtype=jnp.dtype(model_config.param_dtype),
    )


def example_inputs(model_config: ml_collections.ConfigDict, batch_size: int = 1) -> dict[str, jax.Array]:
    """Zero inputs of the right shapes for `UPGPT.__call__` (init, `jax.eval_shape`, compilation)."""
    height, width = model_config.image_size
    downsample = 2 ** (len(model_config.vae.channel_mult) - 1)
    fusion = model_config.fusion
    return dict(
        images=jnp.zeros((batch_size, height, width, model_config.vae.in_channels)),
        person_mask=jnp.zeros((batch_size, height // downsample, width // downsample, 1)),
        timesteps=jnp.zeros((batch_size,), jnp.int32),
        text=jnp.zeros((batch_size, model_config.clip.max_length, fusion.text_dim)),
        style=jnp.zeros((batch_size, fusion.num_parts, fusion.style_dim)),
        pose=jnp.zeros((batch_size, fusion.pose_dim)),
    )


def init_params(model: UPGPT, model_config: ml_collections.ConfigDict, seed: int) -> dict[str, Any]:
    """Freshly initialised parameters (unboxed), e.g. to train from scratch.

    The key uses the "unsafe_rbg" generator for init only: with the default threefry, XLA spends
    about twice as long compiling the hundreds of per-parameter random draws as the model itself
    (measured 25 s vs 12.6 s for the tiny UNet on 2 CPU cores). Same seed, same parameters.
    """
    key = jax.random.key(seed, impl="unsafe_rbg")
    return nn.unbox(jax.jit(model.init)(key, **example_inputs(model_config)))["params"]


def _plain(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A ConfigDict as a plain dict with tuples (hashable, as linen module fields should be)."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.to_dict().items()}
