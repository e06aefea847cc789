"""Layers shared by the UNet and the KL autoencoder (NHWC, Flax linen).

Every parameter is created through the factories below so that it carries logical axis names
(see the project's vocabulary: conv kernels are ("conv_height", "conv_width", "conv_in",
"conv_out"), dense kernels name their (in, out) axes, norms use ("norm",)). Module and
parameter names mirror diffusers' PyTorch modules, so `upgpt_jax.weights.torch_params` maps a
diffusers state dict onto these parameters by a generic rule.

Precision: matmuls and convolutions run in `dtype`; GroupNorm/LayerNorm statistics and attention
logits/softmax are always computed in float32, so bfloat16 compute stays stable.

Activations are pinned by logical names at block boundaries (`constrain`: res-block outputs,
attention q/k/v and outputs; the UNet adds its transformer blocks): under the jitted train step
or sampler, XLA then shards them as the config's rules say, batch over data/FSDP and heads over
"tensor", instead of guessing from the weights (e.g. all-gathering activations rather than the
FSDP-sharded weights). Outside such a trace the constraints do nothing.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from upgpt_jax.models.flash_attention import dot_product_attention
from upgpt_jax.sharding import constrain

Array = jax.Array
Dtype = jnp.dtype | type
Initializer = Callable[..., Array]

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
NORM_AXES = ("norm",)
# Logical names of activations (rules in config_base.DEFAULT_AXIS_RULES).
IMAGE_ACTIVATION = ("batch", "activation_height", "activation_width", "activation_embed")
TOKEN_ACTIVATION = ("batch", "activation_length", "activation_embed")
HEAD_ACTIVATION = ("batch", "activation_length", "activation_heads", "activation_kv")
MLP_ACTIVATION = ("batch", "activation_length", "activation_mlp")


def partitioned_dense(
    features: int,
    axes: tuple[str, str],
    *,
    name: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    use_bias: bool = True,
    kernel_init: Initializer = nn.linear.default_kernel_init,
) -> nn.Dense:
    """An `nn.Dense` whose kernel is named `axes` (in, out) and whose bias is named (out,)."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


def partitioned_conv(
    features: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    padding: int | Sequence[tuple[int, int]] | None = None,
    name: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Initializer = nn.linear.default_kernel_init,
) -> nn.Conv:
    """A square-kernel NHWC `nn.Conv` with logical axis names.

    `padding=None` means "same" padding for stride 1 (kernel_size // 2 on every side), which is
    what PyTorch's `Conv2d(k, padding=k // 2)` does.
    """
    if padding is None:
        padding = kernel_size // 2
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


def _norm_settings(epsilon: float, name: str | None, dtype: Dtype, param_dtype: Dtype) -> dict:
    """What every norm here shares: two-pass fp32 statistics and ("norm",)-named scale and bias."""
    return dict(
        epsilon=epsilon,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), NORM_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), NORM_AXES),
        name=name,
    )


def group_norm(
    epsilon: float,
    num_groups: int = 32,
    *,
    name: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nn.GroupNorm:
    """GroupNorm over the channel (last) axis with float32 statistics.

    The two-pass variance (`use_fast_variance=False`) matches PyTorch's numerics on activations
    with a large mean, which the one-pass E[x^2] - E[x]^2 form does not.
    """
    return nn.GroupNorm(num_groups=num_groups, **_norm_settings(epsilon, name, dtype, param_dtype))


def layer_norm(
    epsilon: float = 1e-5,
    *,
    name: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nn.LayerNorm:
    """LayerNorm with PyTorch's default epsilon (1e-5; Flax's is 1e-6) and fp32 statistics."""
    return nn.LayerNorm(**_norm_settings(epsilon, name, dtype, param_dtype))


def multi_head_attention(
    hidden: Array,
    context: Array | None,
    *,
    num_heads: int,
    qkv_bias: bool,
    context_axis: str = "embed",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    implementation: str | None = None,
) -> Array:
    """Scaled dot-product attention with projections `to_q`, `to_k`, `to_v` and `to_out_0`.

    Call it inside a compact method: the four Dense layers become children of the calling module,
    which mirrors diffusers' `Attention` (whose output Linear lives at `to_out.0`). `hidden` is
    (B, T, C); keys and values come from `context` (B, S, D), or from `hidden` when it is None.
    `jax.nn.dot_product_attention` takes the (B, T, heads, head_dim) layout directly, so no
    transposes are needed; `implementation=None` lets JAX choose (XLA today, "cudnn" can be forced),
    "flash" takes the Pallas TPU kernel where it applies (models/flash_attention.py).
    Logits and softmax run in float32 even for bfloat16 inputs.
    """
    batch, length, width = hidden.shape
    if width % num_heads:
        raise ValueError(f"attention width {width} is not divisible by num_heads={num_heads}")
    head_dim = width // num_heads
    source, source_axis = (hidden, "embed") if context is None else (context, context_axis)

    def project(name: str, inputs: Array, in_axis: str) -> Array:
        dense = partitioned_dense(
            width, (in_axis, "heads"), name=name, use_bias=qkv_bias, dtype=dtype,
            param_dtype=param_dtype,
        )
        projected = dense(inputs)
        return constrain(projected.reshape(projected.shape[:2] + (num_heads, head_dim)), HEAD_ACTIVATION)

    query = project("to_q", hidden, "embed")
    key = project("to_k", source, source_axis)
    value = project("to_v", source, source_axis)
    attended = dot_product_attention(query, key, value, implementation)
    attended = constrain(attended, HEAD_ACTIVATION).reshape(batch, length, width)
    out = partitioned_dense(
        width, ("heads", "embed"), name="to_out_0", dtype=dtype, param_dtype=param_dtype
    )(attended)
    return constrain(out, TOKEN_ACTIVATION)


def norm_silu_conv_out(
    x: Array,
    features: int,
    *,
    epsilon: float,
    norm_groups: int,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Initializer = nn.linear.default_kernel_init,
) -> Array:
    """The output head of the UNet, encoder and decoder: `conv_norm_out`, SiLU, 3x3 `conv_out`.

    Call it inside a compact method; both layers become children of the calling module.
    """
    precision = dict(dtype=dtype, param_dtype=param_dtype)
    x = nn.silu(group_norm(epsilon, norm_groups, name="conv_norm_out", **precision)(x))
    return partitioned_conv(features, name="conv_out", kernel_init=kernel_init, **precision)(x)


class ResnetBlock(nn.Module):
    """diffusers `ResnetBlock2D` (LDM `ResBlock`): norm-SiLU-conv, + projected time embedding,
    norm-SiLU-dropout-conv, and a 1x1 `conv_shortcut` on the residual when the width changes.

    The UNet passes a timestep embedding; the autoencoder passes `temb=None` and has no
    `time_emb_proj`. `zero_init_output` zero-initialises `conv2`, as LDM does for the UNet so each
    block starts as the identity when training from scratch.
    """

    out_channels: int
    norm_groups: int = 32
    epsilon: float = 1e-5
    dropout: float = 0.0
    zero_init_output: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        """x: (B, H, W, C); temb: (B, time_embed) or None -> (B, H, W, out_channels)."""
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = group_norm(self.epsilon, self.norm_groups, name="norm1", **precision)(x)
        h = partitioned_conv(self.out_channels, name="conv1", **precision)(nn.silu(h))
        if temb is not None:
            projection = partitioned_dense(
                self.out_channels, ("time_embed", "embed"), name="time_emb_proj", **precision
            )
            h = h + projection(nn.silu(temb))[:, None, None, :]
        h = group_norm(self.epsilon, self.norm_groups, name="norm2", **precision)(h)
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
        conv2_init = (
            nn.initializers.zeros_init() if self.zero_init_output else nn.linear.default_kernel_init
        )
        h = partitioned_conv(
            self.out_channels, name="conv2", kernel_init=conv2_init, **precision
        )(h)
        if x.shape[-1] != self.out_channels:
            x = partitioned_conv(self.out_channels, 1, name="conv_shortcut", **precision)(x)
        return constrain(x.astype(h.dtype) + h, IMAGE_ACTIVATION)


class Downsample(nn.Module):
    """Stride-2 3x3 `conv` halving H and W.

    The UNet pads 1 on every side (output ceil(H/2)); the LDM autoencoder pads only bottom/right
    (`asymmetric_padding=True`, diffusers' `padding=0` path), which matters for odd sizes and for
    bit-exact parity with the released weights.
    """

    channels: int
    asymmetric_padding: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: (B, H, W, C) -> (B, H', W', channels)."""
        padding = ((0, 1), (0, 1)) if self.asymmetric_padding else 1
        conv = partitioned_conv(
            self.channels, strides=2, padding=padding, name="conv",
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        return constrain(conv(x), IMAGE_ACTIVATION)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source rows of PyTorch's `F.interpolate(mode="nearest", size=...)` along one axis."""
    scale = np.float32(in_size / out_size)
    indices = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
    return np.minimum(indices, in_size - 1)


def resize_nearest(x: Array, output_size: tuple[int, int]) -> Array:
    """Nearest-neighbour resize of (B, H, W, C) to `output_size`, indexed exactly like PyTorch.

    The common exact 2x case is a broadcast+reshape (no gather); other sizes (a skip connection of
    odd size in the UNet) gather static indices.
    """
    batch, height, width, channels = x.shape
    out_h, out_w = output_size
    if (out_h, out_w) == (2 * height, 2 * width):
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
        return x.reshape(batch, out_h, out_w, channels)
    x = jnp.take(x, _nearest_indices(height, out_h), axis=1)
    return jnp.take(x, _nearest_indices(width, out_w), axis=2)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling (x2, or to `output_size`) followed by a 3x3 `conv`."""

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, output_size: tuple[int, int] | None = None) -> Array:
        """x: (B, H, W, C) -> (B, 2H, 2W, channels), or (B, *output_size, channels)."""
        if output_size is None:
            output_size = (2 * x.shape[1], 2 * x.shape[2])
        # Constrained on both sides of the conv: left to itself, XLA all-gathered the upsampled
        # activations over the FSDP axis (100 GB per chip per step for upgpt_256 on v5e-256 with
        # fsdp=16, two thirds of the step's traffic; `python -m upgpt_jax.aot`).
        x = constrain(resize_nearest(x, tuple(output_size)), IMAGE_ACTIVATION)
        conv = partitioned_conv(
            self.channels, name="conv", dtype=self.dtype, param_dtype=self.param_dtype
        )
        return constrain(conv(x), IMAGE_ACTIVATION)
