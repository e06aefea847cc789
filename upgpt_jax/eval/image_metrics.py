"""PSNR, SSIM and MS-SSIM per image in pure JAX, numerically matching UPGPT's evaluation.

UPGPT's evaluation (scripts/eval_metrics.py) loaded each sample and ground-truth image with
torchvision's ToTensor (RGB in [0, 1], 256x176 for DeepFashion) and called pytorch_msssim 1.0.0's
`ssim(sample, gt, data_range=1, size_average=False)` and `ms_ssim(...)` with the same arguments,
then averaged the per-image scores. `ssim` and `ms_ssim` here follow that library's conventions
exactly, so with [0, 1] NHWC images and the default arguments their numbers are comparable with
the paper's SSIM / MS-SSIM columns (equal up to float32 rounding; see tests/test_image_metrics.py):

- Window: a 1-D Gaussian of `window_size` taps at offsets -(window_size // 2) .. window_size // 2,
  exp(-x^2 / (2 sigma^2)) normalised to sum 1, applied separably (height, then width) to every
  channel on its own.
- 'valid' filtering: no padding, so the local-statistics maps shrink by window_size - 1 per side
  and border pixels are not over-weighted by any padding mode. (scikit-image's
  `structural_similarity` filters 'same' with reflection and then crops (window_size - 1) // 2 from
  each border before averaging, which leaves the same values.) pytorch_msssim silently skips the
  filter along a side shorter than the window; here that is an error instead.
- Local variances are the population ones, E[x^2] - E[x]^2 (no sample-covariance correction), with
  C1 = (k1 * data_range)^2 and C2 = (k2 * data_range)^2 and all exponents 1.
- Per image: the SSIM (or contrast-structure, "cs") map is averaged over space per channel, then
  the channel values are averaged. SSIM itself is not clipped (it can be negative).
- MS-SSIM over len(weights) scales: at every scale but the last, cs per channel goes through a ReLU
  and both images are 2x2 average-pooled; before pooling, a side of odd length gets one zero row /
  column in front (torch's `avg_pool2d(padding=1)` with `count_include_pad=True`, whose trailing pad
  falls outside the last window), so the border output is half the edge pixel. At the last scale
  the full SSIM per channel, also ReLU-ed, is used. Per channel the result is
  prod_i value_i ** weight_i, and the channels are then averaged (mean of per-channel MS-SSIM, not
  MS-SSIM of channel means). pytorch_msssim requires the smaller side to exceed
  (window_size - 1) * 2**4 whatever the number of weights; here the bound is
  (window_size - 1) * 2**(levels - 1), identical for the default five weights, and it guarantees that
  the coarsest scale is still at least `window_size` pixels on each side.

`psnr` is 10 log10(data_range^2 / MSE) with the MSE over all pixels and channels of an image
(scikit-image's `peak_signal_noise_ratio`); identical images give +inf, as there.

All inputs are NHWC batches (N, H, W, C) and each function returns shape (N,). Integer and
low-precision inputs are computed in float32 (pass data_range=255 for uint8 images). The
functions are pure jnp, so they jit; keep the keyword arguments static, e.g.
`jax.jit(ms_ssim, static_argnames=("data_range", "weights"))`. The filters run at HIGHEST precision:
the variances are differences of filtered moments, which reduced-precision (TF32/bf16) GPU
convolutions would degrade.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, per scale, fine to coarse


def _checked_pair(a: Array, b: Array, function: str) -> tuple[Array, Array]:
    """Both images as float arrays (at least float32) after checking they are equal NHWC shapes."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 4:
        raise ValueError(f"{function}: argument `a` must be a 4-D NHWC batch (N, H, W, C), got shape {a.shape}")
    if b.shape != a.shape:
        raise ValueError(
            f"{function}: argument `b` must have the same shape as `a` {a.shape}, got {b.shape}"
        )
    dtype = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    return a.astype(dtype), b.astype(dtype)


def _check_window(window_size: int, image_shape: tuple[int, ...], function: str) -> None:
    if window_size < 1 or window_size % 2 != 1:
        raise ValueError(f"{function}: argument `window_size` must be a positive odd integer, got {window_size}")
    height, width = image_shape[1:3]
    if min(height, width) < window_size:
        raise ValueError(
            f"{function}: arguments `a`/`b` must be at least window_size={window_size} pixels on each side "
            f"(valid filtering), got images of {height}x{width}"
        )


def _gaussian_window(window_size: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of pytorch_msssim's `_fspecial_gauss_1d` (centred taps)."""
    offsets = np.arange(window_size, dtype=np.float64) - window_size // 2
    window = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return window / window.sum()


def _valid_gaussian_filter(images: Array, window: np.ndarray) -> Array:
    """Separable per-channel (depthwise) Gaussian filter without padding: (N, H, W, C) -> (N, H-k+1, W-k+1, C)."""
    channels = images.shape[-1]
    taps = jnp.asarray(window, dtype=images.dtype)
    for kernel_shape in ((window.size, 1, 1, 1), (1, window.size, 1, 1)):  # HWIO: height pass, width pass
        kernel = jnp.tile(taps.reshape(kernel_shape), (1, 1, 1, channels))
        images = lax.conv_general_dilated(
            images,
            kernel,
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
            precision=lax.Precision.HIGHEST,
        )
    return images


def _ssim_and_cs(
    a: Array, b: Array, data_range: float, window: np.ndarray, k1: float, k2: float
) -> tuple[Array, Array]:
    """Spatial means of the SSIM map and of its contrast-structure factor, each (N, C)."""
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # One filter call over the five moments stacked along channels.
    moments = _valid_gaussian_filter(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), window)
    mu_a, mu_b, mean_aa, mean_bb, mean_ab = jnp.split(moments, 5, axis=-1)
    var_a = mean_aa - mu_a * mu_a
    var_b = mean_bb - mu_b * mu_b
    cov_ab = mean_ab - mu_a * mu_b
    cs_map = (2.0 * cov_ab + c2) / (var_a + var_b + c2)
    ssim_map = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1) * cs_map
    return ssim_map.mean(axis=(1, 2)), cs_map.mean(axis=(1, 2))


def _average_pool_2x2(images: Array) -> Array:
    """2x2 mean pooling; an odd side gets one leading zero row/column that counts in the mean."""
    _, height, width, _ = images.shape
    images = jnp.pad(images, ((0, 0), (height % 2, 0), (width % 2, 0), (0, 0)))
    n, height, width, channels = images.shape
    return images.reshape(n, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


def psnr(a: Array, b: Array, data_range: float = 1.0) -> Array:
    """Peak signal-to-noise ratio in dB per image, (N,); +inf where the images are identical."""
    a, b = _checked_pair(a, b, "psnr")
    mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / mse)


def ssim(
    a: Array,
    b: Array,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Array:
    """SSIM per image, (N,), as pytorch_msssim.ssim(..., size_average=False) (module docstring)."""
    a, b = _checked_pair(a, b, "ssim")
    _check_window(window_size, a.shape, "ssim")
    ssim_per_channel, _ = _ssim_and_cs(a, b, data_range, _gaussian_window(window_size, sigma), k1, k2)
    return ssim_per_channel.mean(axis=-1)


def ms_ssim(
    a: Array,
    b: Array,
    data_range: float = 1.0,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Array:
    """Multi-scale SSIM per image, (N,), as pytorch_msssim.ms_ssim(..., size_average=False)."""
    a, b = _checked_pair(a, b, "ms_ssim")
    _check_window(window_size, a.shape, "ms_ssim")
    levels = len(weights)
    if levels < 1:
        raise ValueError("ms_ssim: argument `weights` must hold one weight per scale, got an empty sequence")
    min_side = (window_size - 1) * 2 ** (levels - 1)
    if min(a.shape[1:3]) <= min_side:
        raise ValueError(
            f"ms_ssim: arguments `a`/`b` must have a smaller side larger than (window_size - 1) * 2**(levels - 1)"
            f" = {min_side} for window_size={window_size} and {levels} scales, got images of "
            f"{a.shape[1]}x{a.shape[2]}"
        )
    window = _gaussian_window(window_size, sigma)
    per_scale = []
    for level in range(levels):
        ssim_per_channel, cs_per_channel = _ssim_and_cs(a, b, data_range, window, k1, k2)
        if level < levels - 1:
            per_scale.append(jax.nn.relu(cs_per_channel))
            a, b = _average_pool_2x2(a), _average_pool_2x2(b)
    per_scale.append(jax.nn.relu(ssim_per_channel))
    exponents = jnp.asarray(weights, dtype=a.dtype)[:, None, None]
    per_channel = jnp.prod(jnp.stack(per_scale) ** exponents, axis=0)
    return per_channel.mean(axis=-1)
