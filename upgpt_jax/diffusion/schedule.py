"""The forward (noising) process of DDPM: beta schedules and q(x_t | x_0).

All per-timestep quantities are precomputed once in float64 with numpy and stored as
float32 arrays, so that every sampler and the training loss read the same numbers and
nothing is recomputed inside jit.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def make_betas(schedule: str, beta_start: float, beta_end: float, num_timesteps: int) -> np.ndarray:
    """Betas for `num_timesteps` steps, float64.

    "sqrt_linear" is what LDM (and so UPGPT and Stable Diffusion) calls "linear":
    linear in sqrt(beta), i.e. diffusers' "scaled_linear". "linear" is DDPM's linear-in-beta.
    """
    if num_timesteps < 1:
        raise ValueError(f"diffusion.num_timesteps must be >= 1, got {num_timesteps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    if schedule == "sqrt_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    raise ValueError(f"diffusion.schedule must be 'sqrt_linear' or 'linear', got {schedule!r}")


@flax.struct.dataclass
class NoiseSchedule:
    """Per-timestep constants of the forward process (index t = 0 .. T-1)."""

    betas: jax.Array
    alphas_cumprod: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def create(cls, schedule: str = "sqrt_linear", beta_start: float = 0.00085, beta_end: float = 0.012,
               num_timesteps: int = 1000) -> "NoiseSchedule":
        betas = make_betas(schedule, beta_start, beta_end, num_timesteps)
        alphas_cumprod = np.cumprod(1.0 - betas)
        as_f32 = lambda x: jnp.asarray(x, dtype=jnp.float32)  # noqa: E731
        return cls(
            betas=as_f32(betas),
            alphas_cumprod=as_f32(alphas_cumprod),
            sqrt_alphas_cumprod=as_f32(np.sqrt(alphas_cumprod)),
            sqrt_one_minus_alphas_cumprod=as_f32(np.sqrt(1.0 - alphas_cumprod)),
        )

    @classmethod
    def from_config(cls, config) -> "NoiseSchedule":
        """From a `config.diffusion` ConfigDict."""
        return cls.create(config.schedule, config.beta_start, config.beta_end, config.num_timesteps)

    def add_noise(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """Sample q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, per batch element."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = self.sqrt_alphas_cumprod[t].reshape(shape).astype(x0.dtype)
        s = self.sqrt_one_minus_alphas_cumprod[t].reshape(shape).astype(x0.dtype)
        return a * x0 + s * noise

    def predict_x0(self, x_t: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
        """Invert add_noise given the noise: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        a = self.sqrt_alphas_cumprod[t].reshape(shape)
        s = self.sqrt_one_minus_alphas_cumprod[t].reshape(shape)
        return (x_t - s * eps) / a
