"""Analytic FLOP counts of UPGPT's networks, per image, for any `config.model`.

Why analytic: MFU needs the FLOPs the model *requires*, independent of how a compiler fuses,
rematerialises or pads it, and it must be cheap for the 425 M-parameter UNet (no tracing).
The counts walk the same structure as `upgpt_jax.models.unet` / `vae` (tests/test_flops.py
checks them against XLA's own count of the jitted modules).

Conventions:
- 2 FLOPs per multiply-add; only matrix products are counted: convolutions, dense layers and
  the two attention matmuls (query-key scores and the probability-weighted values, for self- and
  cross-attention). Norms, activations, softmax, bias adds, residuals, resizes and the timestep
  sinusoid are left out (elementwise, a few percent, and not what the peak FLOP/s refers to).
- `count_padding=True` (default) counts every kernel tap of a convolution, also those that fall
  on zero padding: the usual convention (torch's FlopCounter, fvcore) and the one the peer
  anchors' 201.2 GFLOP/step uses. `False` counts only the taps that touch real input, which is
  what XLA's cost analysis reports (7% less for upgpt_256, 15% less on the 8x6 tiny latents).
- The cross-attention context has `clip.max_length + fusion.num_parts + 1` tokens (text, one
  token per style part, the pose token).
- A train step is forward + backward: 3x the forward, less the input gradients that products fed
  by data never need (see `train_step_flops`). It covers the UNet and the fusion only: the frozen VAE
  encoder and CLIP encoders are NOT included, as in training from precomputed features (the
  anchors' random-data setting). `unet.remat` adds one more forward of compute (hardware FLOPs),
  which is deliberately not counted: MFU counts the model's FLOPs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections

KINDS = ("conv", "dense", "self_attention", "cross_attention")
Size = tuple[int, int]


def _taps(size: int, kernel: int, stride: int, pad_low: int, pad_high: int, count_padding: bool) -> tuple[int, int]:
    """(output size, summed kernel taps over all output positions) along one spatial axis."""
    out = (size + pad_low + pad_high - kernel) // stride + 1
    if count_padding:
        return out, out * kernel
    valid = sum(0 <= o * stride + k - pad_low < size for o in range(out) for k in range(kernel))
    return out, valid


@dataclasses.dataclass
class _Counter:
    """Accumulates FLOPs per kind while the model's structure is walked, one image at a time."""

    count_padding: bool = True
    flops: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    # Forward FLOPs of products whose input is data (no input gradient in the backward pass).
    data_input_flops: int = 0

    def conv(self, size: Size, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
             padding: Sequence[tuple[int, int]] | None = None, data_input: bool = False) -> Size:
        """A convolution on a (height, width) input; returns the output size."""
        if padding is None:
            padding = ((kernel // 2, kernel // 2),) * 2
        (out_h, taps_h), (out_w, taps_w) = (
            _taps(n, kernel, stride, low, high, self.count_padding) for n, (low, high) in zip(size, padding))
        flops = 2 * taps_h * taps_w * in_channels * out_channels
        self.flops["conv"] += flops
        self.data_input_flops += flops if data_input else 0
        return out_h, out_w

    def dense(self, tokens: int, in_features: int, out_features: int, data_input: bool = False) -> None:
        flops = 2 * tokens * in_features * out_features
        self.flops["dense"] += flops
        self.data_input_flops += flops if data_input else 0

    def attention(self, queries: int, keys: int, width: int, cross: bool, source_width: int | None = None,
                  data_source: bool = False) -> None:
        """q/k/v/out projections (dense) and the score and value matmuls. Their FLOPs depend on the
        total width (heads x head_dim) only, not on the number of heads. `data_source`: the keys'
        source is data (a context of precomputed features)."""
        self.dense(queries, width, width)
        self.dense(keys, width if source_width is None else source_width, 2 * width, data_input=data_source)
        self.dense(queries, width, width)
        self.flops["cross_attention" if cross else "self_attention"] += 2 * (2 * queries * keys * width)

    def resnet(self, size: Size, in_channels: int, out_channels: int, temb_width: int | None) -> None:
        self.conv(size, in_channels, out_channels)
        if temb_width is not None:
            self.dense(1, temb_width, out_channels)
        self.conv(size, out_channels, out_channels)
        if in_channels != out_channels:
            self.conv(size, in_channels, out_channels, kernel=1)

    def transformer(self, size: Size, width: int, unet: ml_collections.ConfigDict, context_length: int,
                    context_is_data: bool) -> None:
        """SpatialTransformer: proj_in, `depth` x (self-attn, cross-attn, GEGLU MLP), proj_out."""
        tokens = size[0] * size[1]
        project = (lambda: self.dense(tokens, width, width)) if unet.use_linear_projection else (
            lambda: self.conv(size, width, width, kernel=1))
        project()
        for _ in range(unet.transformer_depth):
            self.attention(tokens, tokens, width, cross=False)
            self.attention(tokens, context_length, width, cross=True, source_width=unet.context_dim,
                           data_source=context_is_data)
            self.dense(tokens, width, 8 * width)  # GEGLU proj to 2 x 4 x width
            self.dense(tokens, 4 * width, width)
        project()


def latent_size(model_config: ml_collections.ConfigDict) -> Size:
    """(h, w) of the UNet's input: the image size over the VAE's downsampling (8 for kl-f8)."""
    factor = 2 ** (len(model_config.vae.channel_mult) - 1)
    height, width = model_config.image_size
    return height // factor, width // factor


def context_length(model_config: ml_collections.ConfigDict) -> int:
    """Tokens the UNet cross-attends to: text tokens, one per style part, the pose token."""
    return int(model_config.clip.max_length) + int(model_config.fusion.num_parts) + 1


def _count_unet(model_config: ml_collections.ConfigDict, count_padding: bool, context_is_data: bool = False
                ) -> _Counter:
    """Walks the UNet of `upgpt_jax.models.unet` for one image."""
    unet = model_config.unet
    counter = _Counter(count_padding)
    length = context_length(model_config)
    transformer = lambda size, width: counter.transformer(size, width, unet, length, context_is_data)  # noqa: E731
    temb_width = 4 * unet.channels
    counter.dense(1, unet.channels, temb_width, data_input=True)  # time_embedding linear_1, linear_2
    counter.dense(1, temb_width, temb_width)

    size = latent_size(model_config)
    counter.conv(size, unet.in_channels, unet.channels, data_input=True)
    widths = [unet.channels * mult for mult in unet.channel_mult]
    skips = [(size, unet.channels)]
    channels = unet.channels
    for level, width in enumerate(widths):
        for _ in range(unet.num_res_blocks):
            counter.resnet(size, channels, width, temb_width)
            channels = width
            if level in unet.attention_levels:
                transformer(size, width)
            skips.append((size, width))
        if level < len(widths) - 1:
            size = counter.conv(size, width, width, stride=2)
            skips.append((size, width))

    counter.resnet(size, channels, channels, temb_width)
    transformer(size, channels)
    counter.resnet(size, channels, channels, temb_width)

    for level in reversed(range(len(widths))):
        width = widths[level]
        for _ in range(unet.num_res_blocks + 1):
            _, skip_channels = skips.pop()
            counter.resnet(size, channels + skip_channels, width, temb_width)
            channels = width
            if level in unet.attention_levels:
                transformer(size, width)
        if level > 0:
            size = skips[-1][0]  # nearest upsampling to the next skip's size, then a 3x3 conv
            counter.conv(size, width, width)
    counter.conv(size, channels, unet.out_channels)
    return counter


def unet_flop_breakdown(model_config: ml_collections.ConfigDict, *, count_padding: bool = True) -> dict[str, int]:
    """Forward FLOPs of the UNet for one image, by kind (KINDS)."""
    return dict(_count_unet(model_config, count_padding).flops)


def unet_forward_flops(model_config: ml_collections.ConfigDict, *, count_padding: bool = True) -> int:
    """Forward FLOPs of the UNet for one image (sum of `unet_flop_breakdown`)."""
    return sum(unet_flop_breakdown(model_config, count_padding=count_padding).values())


def _count_fusion(model_config: ml_collections.ConfigDict) -> _Counter:
    fusion = model_config.fusion
    counter = _Counter()
    counter.dense(1, fusion.pose_dim, fusion.context_dim, data_input=True)
    if fusion.mode == "learned":
        tokens = context_length(model_config)
        counter.dense(int(model_config.clip.max_length), fusion.text_dim, fusion.context_dim, data_input=True)
        counter.dense(fusion.num_parts, fusion.style_dim, fusion.context_dim, data_input=True)
        for _ in range(fusion.learned_layers):
            counter.attention(tokens, tokens, fusion.context_dim, cross=False)
            counter.dense(tokens, fusion.context_dim, 4 * fusion.context_dim)
            counter.dense(tokens, 4 * fusion.context_dim, fusion.context_dim)
    return counter


def fusion_forward_flops(model_config: ml_collections.ConfigDict) -> int:
    """Forward FLOPs of the multimodal fusion for one example: the pose projection in mode
    "concat" (~0.1 MFLOP); projections plus the small transformer in mode "learned"."""
    return sum(_count_fusion(model_config).flops.values())


def train_step_flops(model_config: ml_collections.ConfigDict, *, count_padding: bool = True,
                     context_requires_grad: bool = True) -> int:
    """Model FLOPs of one training example (UNet + fusion), forward and backward.

    The backward pass of a product costs 2x its forward (gradients of the weights and of the
    input), except for products fed by data, which need no input gradient: conv_in, the timestep
    MLP's first layer and the fusion's projections of the features. The UNet's context does need
    its gradient, even in fusion mode "concat": its null embeddings and pose projection are
    trained. `context_requires_grad=False` counts a UNet benchmarked on a plain context tensor
    (as the peer anchors' 201.2 GFLOP for upgpt_256 was; ours with the gradient is ~1% more).
    Excludes the frozen VAE encoder and CLIP (precomputed features), the optimizer update
    (elementwise) and remat's recomputation.
    """
    counters = (_count_unet(model_config, count_padding, not context_requires_grad), _count_fusion(model_config))
    return sum(3 * sum(counter.flops.values()) - counter.data_input_flops for counter in counters)


def vae_encoder_flops(model_config: ml_collections.ConfigDict, *, count_padding: bool = True) -> int:
    """Forward FLOPs of the frozen VAE encoder (+ quant_conv) for one image: what encoding the
    target image online, instead of reading precomputed latent moments, adds to each example."""
    vae = model_config.vae
    counter = _Counter(count_padding)
    size = tuple(model_config.image_size)
    counter.conv(size, vae.in_channels, vae.channels)
    channels = vae.channels
    for level, mult in enumerate(vae.channel_mult):
        for _ in range(vae.num_res_blocks):
            counter.resnet(size, channels, vae.channels * mult, None)
            channels = vae.channels * mult
        if level < len(vae.channel_mult) - 1:  # LDM pads bottom/right only
            size = counter.conv(size, channels, channels, stride=2, padding=((0, 1), (0, 1)))
    counter.resnet(size, channels, channels, None)
    tokens = size[0] * size[1]
    counter.attention(tokens, tokens, channels, cross=False)
    counter.resnet(size, channels, channels, None)
    counter.conv(size, channels, 2 * vae.z_channels)
    counter.conv(size, 2 * vae.z_channels, 2 * vae.z_channels, kernel=1)
    return sum(counter.flops.values())
