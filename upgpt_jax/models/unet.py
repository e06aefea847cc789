"""The denoising UNet of UPGPT (LDM `UNetModel` with spatial transformers, NHWC, Flax linen).

Parameter paths mirror diffusers' `UNet2DConditionModel` (`down_blocks_0/attentions_0/
transformer_blocks_0/attn1/to_q/kernel`, ...), so `weights.torch_params.torch_to_flax_params`
loads a diffusers state dict directly. LDM semantics kept: sinusoidal timestep embedding with cos
first, `num_heads` heads per transformer of width/num_heads each, GEGLU feed-forward, and the
zero-initialised output convolutions LDM uses when training from scratch.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from upgpt_jax.models.layers import (
    IMAGE_ACTIVATION,
    MLP_ACTIVATION,
    TOKEN_ACTIVATION,
    Array,
    Dtype,
    Downsample,
    ResnetBlock,
    Upsample,
    group_norm,
    layer_norm,
    multi_head_attention,
    norm_silu_conv_out,
    partitioned_conv,
    partitioned_dense,
)
from upgpt_jax.sharding import constrain

RESNET_EPS = 1e-5
TRANSFORMER_NORM_EPS = 1e-6


def timestep_embedding(timesteps: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding (B,) -> (B, dim) in float32, cos half first (LDM; diffusers
    `flip_sin_to_cos=True, downscale_freq_shift=0`)."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
    embedding = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


class TimestepEmbedding(nn.Module):
    """`linear_1` -> SiLU -> `linear_2`, from the sinusoidal width to 4x the base width."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, embedding: Array) -> Array:
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        linear_1 = partitioned_dense(self.features, ("embed", "mlp"), name="linear_1", **precision)
        linear_2 = partitioned_dense(
            self.features, ("mlp", "time_embed"), name="linear_2", **precision
        )
        return linear_2(nn.silu(linear_1(embedding)))


class Attention(nn.Module):
    """Multi-head attention without q/k/v bias (LDM `CrossAttention`); self-attention when
    `context` is None."""

    num_heads: int
    context_axis: str = "embed"
    attention_implementation: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        return multi_head_attention(
            x, context, num_heads=self.num_heads, qkv_bias=False, context_axis=self.context_axis,
            dtype=self.dtype, param_dtype=self.param_dtype,
            implementation=self.attention_implementation,
        )


class GEGLU(nn.Module):
    """`proj` to 2*inner, then value * GELU(gate) with the exact (erf) GELU, as PyTorch."""

    inner_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        projected = partitioned_dense(
            2 * self.inner_dim, ("embed", "mlp"), name="proj",
            dtype=self.dtype, param_dtype=self.param_dtype,
        )(x)
        value, gate = jnp.split(projected, 2, axis=-1)
        return constrain(value * jax.nn.gelu(gate, approximate=False), MLP_ACTIVATION)


class FeedForward(nn.Module):
    """diffusers `FeedForward` = Sequential(GEGLU, Dropout, Linear): `net_0` then `net_2`."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GEGLU(4 * width, name="net_0", **precision)(x)
        return partitioned_dense(width, ("mlp", "embed"), name="net_2", **precision)(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention on `context`, GEGLU feed-forward."""

    num_heads: int
    attention_implementation: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        """x: (B, T, C); context: (B, L, context_dim) -> (B, T, C)."""
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attention = dict(
            num_heads=self.num_heads, attention_implementation=self.attention_implementation,
            **precision,
        )
        x = constrain(x, TOKEN_ACTIVATION)
        x = x + Attention(name="attn1", **attention)(layer_norm(name="norm1", **precision)(x))
        x = x + Attention(name="attn2", context_axis="context", **attention)(
            layer_norm(name="norm2", **precision)(x), context
        )
        x = x + FeedForward(name="ff", **precision)(layer_norm(name="norm3", **precision)(x))
        return constrain(x, TOKEN_ACTIVATION)


_RematTransformerBlock = nn.remat(BasicTransformerBlock)
_RematResnetBlock = nn.remat(ResnetBlock, static_argnums=(3,))  # (self, x, temb, train)


class SpatialTransformer(nn.Module):
    """diffusers `Transformer2DModel` / LDM `SpatialTransformer`: GroupNorm, `proj_in`, `depth`
    transformer blocks over the H*W tokens, zero-initialised `proj_out`, residual.

    `proj_in`/`proj_out` are 1x1 convolutions (LDM, SD1) or, with `use_linear_projection`, Linear
    layers (SD2); on NHWC both are the same per-pixel matmul, only the stored shapes differ.
    """

    num_heads: int
    depth: int = 1
    use_linear_projection: bool = False
    norm_groups: int = 32
    remat: bool = False
    attention_implementation: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        """x: (B, H, W, C); context: (B, L, context_dim) -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        zeros = nn.initializers.zeros_init()
        h = group_norm(TRANSFORMER_NORM_EPS, self.norm_groups, name="norm", **precision)(x)
        if self.use_linear_projection:
            h = h.reshape(batch, height * width, channels)
            h = partitioned_dense(channels, ("embed", "heads"), name="proj_in", **precision)(h)
        else:
            h = partitioned_conv(channels, 1, name="proj_in", **precision)(h)
            h = h.reshape(batch, height * width, channels)
        block = _RematTransformerBlock if self.remat else BasicTransformerBlock
        for index in range(self.depth):
            h = block(
                self.num_heads, self.attention_implementation, name=f"transformer_blocks_{index}",
                **precision,
            )(h, context)
        if self.use_linear_projection:
            h = partitioned_dense(
                channels, ("heads", "embed"), name="proj_out", kernel_init=zeros, **precision
            )(h)
            h = h.reshape(batch, height, width, channels)
        else:
            h = h.reshape(batch, height, width, channels)
            h = partitioned_conv(channels, 1, name="proj_out", kernel_init=zeros, **precision)(h)
        return constrain(h + x.astype(h.dtype), IMAGE_ACTIVATION)


@dataclasses.dataclass(frozen=True)
class _LayerFactory:
    """Settings shared by every block; builds res blocks and transformers inside the calling
    block's compact method (so they become its children), with remat applied when asked."""

    norm_groups: int
    num_heads: int
    transformer_depth: int
    use_linear_projection: bool
    dropout: float
    remat: bool
    attention_implementation: str | None
    dtype: Dtype
    param_dtype: Dtype

    def resnet(self, out_channels: int, name: str) -> nn.Module:
        block = _RematResnetBlock if self.remat else ResnetBlock
        return block(
            out_channels, norm_groups=self.norm_groups, epsilon=RESNET_EPS, dropout=self.dropout,
            zero_init_output=True, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        )

    def transformer(self, name: str) -> SpatialTransformer:
        return SpatialTransformer(
            self.num_heads, self.transformer_depth, self.use_linear_projection, self.norm_groups,
            self.remat, self.attention_implementation, self.dtype, self.param_dtype, name=name,
        )


class DownBlock(nn.Module):
    """diffusers `CrossAttnDownBlock2D` (with attention) or `DownBlock2D`; returns the output and
    the skip activations (after each res/attention pair and after the downsampler)."""

    out_channels: int
    num_layers: int
    has_attention: bool
    add_downsample: bool
    layers: _LayerFactory

    @nn.compact
    def __call__(
        self, x: Array, temb: Array, context: Array, train: bool
    ) -> tuple[Array, list[Array]]:
        skips = []
        for index in range(self.num_layers):
            x = self.layers.resnet(self.out_channels, f"resnets_{index}")(x, temb, train)
            if self.has_attention:
                x = self.layers.transformer(f"attentions_{index}")(x, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample(
                self.out_channels, name="downsamplers_0",
                dtype=self.layers.dtype, param_dtype=self.layers.param_dtype,
            )(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """diffusers `UNetMidBlock2DCrossAttn`: res block, spatial transformer, res block."""

    layers: _LayerFactory

    @nn.compact
    def __call__(self, x: Array, temb: Array, context: Array, train: bool) -> Array:
        channels = x.shape[-1]
        x = self.layers.resnet(channels, "resnets_0")(x, temb, train)
        x = self.layers.transformer("attentions_0")(x, context)
        return self.layers.resnet(channels, "resnets_1")(x, temb, train)


class UpBlock(nn.Module):
    """diffusers `CrossAttnUpBlock2D` / `UpBlock2D`: each res block first concatenates the most
    recent remaining skip; the upsampler resizes to the next skip's size (exactly 2x unless the
    encoder met an odd size)."""

    out_channels: int
    num_layers: int
    has_attention: bool
    add_upsample: bool
    layers: _LayerFactory

    @nn.compact
    def __call__(
        self,
        x: Array,
        skips: list[Array],
        temb: Array,
        context: Array,
        upsample_size: tuple[int, int] | None,
        train: bool,
    ) -> Array:
        for index in range(self.num_layers):
            x = jnp.concatenate([x, skips[-1 - index].astype(x.dtype)], axis=-1)
            x = self.layers.resnet(self.out_channels, f"resnets_{index}")(x, temb, train)
            if self.has_attention:
                x = self.layers.transformer(f"attentions_{index}")(x, context)
        if self.add_upsample:
            x = Upsample(
                self.out_channels, name="upsamplers_0",
                dtype=self.layers.dtype, param_dtype=self.layers.param_dtype,
            )(x, upsample_size)
        return x


class UNet(nn.Module):
    """Conditional denoising UNet (LDM/SD1 layout). Defaults are UPGPT's released config.

    `attention_levels` lists the resolution levels (0 = full latent resolution) whose blocks carry
    spatial transformers; the middle block always does. `remat` rematerialises each res block and
    transformer block in the backward pass (less memory, ~1/3 more compute).
    """

    in_channels: int = 5
    out_channels: int = 4
    channels: int = 224
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 768
    norm_groups: int = 32
    use_linear_projection: bool = False
    dropout: float = 0.0
    remat: bool = False
    attention_implementation: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, sample: Array, timesteps: Array, context: Array, train: bool = False
    ) -> Array:
        """sample: (B, H, W, in_channels); timesteps: (B,) or scalar, int or float;
        context: (B, L, context_dim) -> predicted noise (B, H, W, out_channels) in `dtype`."""
        if sample.shape[-1] != self.in_channels or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"UNet expects sample (B, H, W, {self.in_channels}) and context "
                f"(B, L, {self.context_dim}); got {sample.shape} and {context.shape}"
            )
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        layers = _LayerFactory(
            self.norm_groups, self.num_heads, self.transformer_depth, self.use_linear_projection,
            self.dropout, self.remat, self.attention_implementation, self.dtype, self.param_dtype,
        )
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (sample.shape[0],))
        temb = TimestepEmbedding(4 * self.channels, name="time_embedding", **precision)(
            timestep_embedding(timesteps, self.channels)
        )

        x = constrain(partitioned_conv(self.channels, name="conv_in", **precision)(sample), IMAGE_ACTIVATION)
        widths = [self.channels * mult for mult in self.channel_mult]
        last_level = len(widths) - 1
        skips = [x]
        for level, width in enumerate(widths):
            x, level_skips = DownBlock(
                width, self.num_res_blocks, level in self.attention_levels, level < last_level,
                layers, name=f"down_blocks_{level}",
            )(x, temb, context, train)
            skips.extend(level_skips)

        x = MidBlock(layers, name="mid_block")(x, temb, context, train)

        consumed = self.num_res_blocks + 1
        for index, level in enumerate(reversed(range(len(widths)))):
            level_skips, skips = skips[-consumed:], skips[:-consumed]
            upsample_size = skips[-1].shape[1:3] if level > 0 else None
            x = UpBlock(
                widths[level], consumed, level in self.attention_levels, level > 0, layers,
                name=f"up_blocks_{index}",
            )(x, level_skips, temb, context, upsample_size, train)

        out = norm_silu_conv_out(
            x, self.out_channels, epsilon=RESNET_EPS, norm_groups=self.norm_groups,
            kernel_init=nn.initializers.zeros_init(), **precision,
        )
        return constrain(out, IMAGE_ACTIVATION)
