"""KL-regularised autoencoder (LDM `kl-f8`, diffusers `AutoencoderKL` layout), NHWC Flax linen.

Parameter paths mirror diffusers (`encoder/down_blocks_0/resnets_0/conv1/kernel`,
`encoder/mid_block/attentions_0/to_q/kernel`, `quant_conv`, `post_quant_conv`, `decoder/...`), so
`weights.torch_params.torch_to_flax_params` loads a diffusers `AutoencoderKL` state dict directly.
Every GroupNorm uses eps 1e-6; downsampling pads bottom/right only, as LDM.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from upgpt_jax.models.layers import (
    Array,
    Dtype,
    Downsample,
    ResnetBlock,
    Upsample,
    group_norm,
    multi_head_attention,
    norm_silu_conv_out,
    partitioned_conv,
)

VAE_NORM_EPS = 1e-6


@flax.struct.dataclass
class DiagonalGaussian:
    """The posterior q(z|x): independent Gaussians per latent element, float32, NHWC."""

    mean: Array
    logvar: Array

    @classmethod
    def from_moments(cls, moments: Array) -> "DiagonalGaussian":
        """Split (B, h, w, 2z) into mean and log-variance (clipped to [-30, 20] as LDM)."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> Array:
        return jnp.exp(self.logvar)

    def sample(self, rng: jax.Array) -> Array:
        """A reparameterised draw mean + std * eps (differentiable in mean and logvar)."""
        return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self) -> Array:
        return self.mean

    def kl(self) -> Array:
        """KL(q || N(0, I)) summed over each example's latent elements -> (B,)."""
        terms = jnp.square(self.mean) + self.var - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))


class MidBlockAttention(nn.Module):
    """Single-head self-attention over all pixels with a GroupNorm in front and a residual
    (diffusers `Attention` with `group_norm`, as `mid_block/attentions_0`)."""

    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, height, width, channels = x.shape
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = group_norm(VAE_NORM_EPS, self.norm_groups, name="group_norm", **precision)(x)
        h = multi_head_attention(
            h.reshape(batch, height * width, channels), None, num_heads=1, qkv_bias=True,
            **precision,
        )
        return x.astype(h.dtype) + h.reshape(batch, height, width, channels)


class MidBlock(nn.Module):
    """diffusers `UNetMidBlock2D` without time embedding: res block, attention, res block."""

    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        settings = dict(
            norm_groups=self.norm_groups, dtype=self.dtype, param_dtype=self.param_dtype
        )
        channels = x.shape[-1]
        x = ResnetBlock(channels, epsilon=VAE_NORM_EPS, name="resnets_0", **settings)(x)
        x = MidBlockAttention(name="attentions_0", **settings)(x)
        return ResnetBlock(channels, epsilon=VAE_NORM_EPS, name="resnets_1", **settings)(x)


class ResnetStack(nn.Module):
    """diffusers `DownEncoderBlock2D` (`resample="down"`) or `UpDecoderBlock2D` (`"up"`):
    `num_layers` res blocks, then an optional resampler (`downsamplers_0` / `upsamplers_0`)."""

    out_channels: int
    num_layers: int
    resample: str | None = None
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for index in range(self.num_layers):
            x = ResnetBlock(
                self.out_channels, self.norm_groups, VAE_NORM_EPS, name=f"resnets_{index}",
                **precision,
            )(x)
        if self.resample == "down":
            x = Downsample(
                self.out_channels, asymmetric_padding=True, name="downsamplers_0", **precision
            )(x)
        elif self.resample == "up":
            x = Upsample(self.out_channels, name="upsamplers_0", **precision)(x)
        elif self.resample is not None:
            raise ValueError(f"resample must be 'down', 'up' or None, got {self.resample!r}")
        return x


class Encoder(nn.Module):
    """Image (B, H, W, in_channels) -> moments (B, H/f, W/f, 2*z_channels), f = 2^(levels-1)."""

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = partitioned_conv(self.channels, name="conv_in", **precision)(x)
        last_level = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            x = ResnetStack(
                self.channels * mult, self.num_res_blocks,
                "down" if level < last_level else None, self.norm_groups,
                name=f"down_blocks_{level}", **precision,
            )(x)
        x = MidBlock(self.norm_groups, name="mid_block", **precision)(x)
        return norm_silu_conv_out(
            x, 2 * self.z_channels, epsilon=VAE_NORM_EPS, norm_groups=self.norm_groups, **precision
        )


class Decoder(nn.Module):
    """Latent (B, h, w, z_channels) -> image (B, h*f, w*f, out_channels)."""

    out_channels: int = 3
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: Array) -> Array:
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = partitioned_conv(self.channels * self.channel_mult[-1], name="conv_in", **precision)(z)
        x = MidBlock(self.norm_groups, name="mid_block", **precision)(x)
        for index, level in enumerate(reversed(range(len(self.channel_mult)))):
            x = ResnetStack(
                self.channels * self.channel_mult[level], self.num_res_blocks + 1,
                "up" if level > 0 else None, self.norm_groups,
                name=f"up_blocks_{index}", **precision,
            )(x)
        return norm_silu_conv_out(
            x, self.out_channels, epsilon=VAE_NORM_EPS, norm_groups=self.norm_groups, **precision
        )


class AutoencoderKL(nn.Module):
    """The first-stage model: `encode` images to a posterior over latents, `decode` latents.

    Use the methods through apply, e.g. `vae.apply(params, x, method=AutoencoderKL.encode)`.
    Latents are unscaled here; the diffusion model multiplies them by its scale factor (0.18215).
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        shared = dict(
            channels=self.channels, channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks, norm_groups=self.norm_groups,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(z_channels=self.z_channels, **shared)
        self.quant_conv = partitioned_conv(2 * self.z_channels, 1, **precision)
        self.post_quant_conv = partitioned_conv(self.z_channels, 1, **precision)
        self.decoder = Decoder(out_channels=self.out_channels, **shared)

    def encode(self, x: Array) -> DiagonalGaussian:
        """x: (B, H, W, in_channels) in [-1, 1] -> posterior over (B, H/8, W/8, z_channels)."""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"AutoencoderKL expects (B, H, W, {self.in_channels}), got {x.shape}")
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))

    def decode(self, z: Array) -> Array:
        """z: (B, h, w, z_channels) -> image (B, 8h, 8w, out_channels) in `dtype`."""
        return self.decoder(self.post_quant_conv(z))

    def __call__(
        self, x: Array, rng: jax.Array | None = None, sample_posterior: bool = False
    ) -> tuple[Array, DiagonalGaussian]:
        """Reconstruct x through a posterior sample (needs `rng`) or its mean; returns
        (reconstruction, posterior). Also what `init` calls to create every parameter."""
        posterior = self.encode(x)
        if sample_posterior:
            if rng is None:
                raise ValueError("sample_posterior=True needs an rng")
            z = posterior.sample(rng)
        else:
            z = posterior.mode()
        return self.decode(z), posterior
