"""PSNR / SSIM / MS-SSIM in JAX against independent references.

References: pytorch_msssim 1.0.0 (what UPGPT's scripts/eval_metrics.py called, on NCHW torch tensors)
and scikit-image (float64, scipy filters). scikit-image's `structural_similarity` with
gaussian_weights=True, sigma=1.5, use_sample_covariance=False filters with an 11-tap Gaussian
(truncate=3.5 -> radius 5) in 'reflect' mode and averages the SSIM map after cropping
(win_size - 1) // 2 = 5 pixels from every border; each kept value depends only on pixels inside the
image, so the crop equals the 'valid' map used here and the two agree to float32 rounding (channels
are averaged the same way, with channel_axis=-1). Comparisons use the project rule
max|ours - ref| <= max(1e-4 * max|ref|, 1e-5).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as torch_ms_ssim
from pytorch_msssim import ssim as torch_ssim
from scipy.ndimage import gaussian_filter
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from upgpt_jax.eval.image_metrics import ms_ssim, psnr, ssim

jit_ssim = jax.jit(ssim, static_argnames=("data_range", "window_size"))
jit_ms_ssim = jax.jit(ms_ssim, static_argnames=("data_range", "window_size", "weights"))

EVAL_SIZE = (256, 176)  # UPGPT's DeepFashion evaluation crop
ODD_SIZE = (255, 175)  # odd sides exercise MS-SSIM's padded pooling at every scale


def assert_close(actual, expected) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    error = np.max(np.abs(actual - expected))
    assert error <= max(1e-4 * np.max(np.abs(expected)), 1e-5), (actual, expected, error)


def person_image(size: tuple[int, int]) -> np.ndarray:
    """A real photo (scikit-image's astronaut, offline) cropped to `size`, float32 in [0, 1]."""
    photo = skimage_data.astronaut()[::2, ::2].astype(np.float32) / 255.0  # 256x256x3
    height, width = size
    top, left = (photo.shape[0] - height) // 2, (photo.shape[1] - width) // 2
    return photo[top : top + height, left : left + width]


def image_pairs(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Batch of 4 pairs: photo vs blurred, photo vs noisy, correlated random, independent random."""
    rng = np.random.default_rng(0)
    photo = person_image(size)
    blurred = gaussian_filter(photo, sigma=(2.0, 2.0, 0.0))
    noisy = np.clip(photo + 0.08 * rng.standard_normal(photo.shape), 0.0, 1.0)
    noise_a = rng.random(photo.shape)
    noise_b = np.clip(noise_a + 0.2 * rng.standard_normal(photo.shape), 0.0, 1.0)
    noise_c = rng.random(photo.shape)
    first = np.stack([photo, photo, noise_a, noise_a]).astype(np.float32)
    second = np.stack([blurred, noisy, noise_b, noise_c]).astype(np.float32)
    return first, second


def to_torch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("size", [EVAL_SIZE, ODD_SIZE])
def test_ssim_and_ms_ssim_match_pytorch_msssim(size):
    first, second = image_pairs(size)
    with torch.no_grad():
        want_ssim = torch_ssim(to_torch(first), to_torch(second), data_range=1, size_average=False)
        want_ms_ssim = torch_ms_ssim(to_torch(first), to_torch(second), data_range=1, size_average=False)
    assert_close(jit_ssim(first, second), want_ssim.numpy())
    assert_close(jit_ms_ssim(first, second), want_ms_ssim.numpy())
    # The pairs span a useful range, so agreement is not vacuous (independent noise: MS-SSIM ~0).
    assert np.ptp(want_ssim.numpy()) > 0.5


def test_small_images_other_window_weights_and_range_match_pytorch_msssim():
    """41x37 (odd), 3-tap window, three scales, 0..255 images with data_range=255."""
    rng = np.random.default_rng(1)
    first = rng.random((2, 41, 37, 3)).astype(np.float32)
    second = np.clip(first + 0.15 * rng.standard_normal(first.shape), 0.0, 1.0).astype(np.float32)
    first, second = 255.0 * first, 255.0 * second
    weights = (0.2, 0.3, 0.5)
    args = dict(data_range=255.0, win_size=3, size_average=False)
    with torch.no_grad():
        want_ssim = torch_ssim(to_torch(first), to_torch(second), **args)
        want_ms_ssim = torch_ms_ssim(to_torch(first), to_torch(second), weights=list(weights), **args)
    assert_close(jit_ssim(first, second, data_range=255.0, window_size=3), want_ssim.numpy())
    got = jit_ms_ssim(first, second, data_range=255.0, window_size=3, weights=weights)
    assert_close(got, want_ms_ssim.numpy())


def test_ssim_matches_scikit_image_on_cropped_map():
    first, second = image_pairs(EVAL_SIZE)
    want = [
        structural_similarity(
            x.astype(np.float64),
            y.astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=-1,
        )
        for x, y in zip(first, second)
    ]
    assert_close(jit_ssim(first, second), np.array(want))


def test_psnr_matches_scikit_image():
    first, second = image_pairs((32, 24))
    want = [peak_signal_noise_ratio(x, y, data_range=1) for x, y in zip(first, second)]
    assert_close(psnr(first, second), np.array(want))
    first_uint8, second_uint8 = (np.round(255 * x).astype(np.uint8) for x in (first, second))
    want_uint8 = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(first_uint8, second_uint8)]
    assert_close(psnr(first_uint8, second_uint8, data_range=255), np.array(want_uint8))


def test_identical_images_score_perfectly():
    first, _ = image_pairs(EVAL_SIZE)
    assert np.all(np.isposinf(np.asarray(psnr(first, first))))
    np.testing.assert_allclose(np.asarray(jit_ssim(first, first)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jit_ms_ssim(first, first)), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: psnr(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 9, 3))), r"psnr: argument `b` must have the same shape"),
        (lambda: ssim(np.zeros((16, 16, 3)), np.zeros((16, 16, 3))), r"ssim: argument `a` must be a 4-D NHWC"),
        (lambda: ssim(np.zeros((1, 10, 16, 3)), np.zeros((1, 10, 16, 3))), r"at least window_size=11 pixels"),
        (lambda: ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16, 3)), window_size=4), r"`window_size` must be"),
        (lambda: ms_ssim(np.zeros((1, 160, 176, 3)), np.zeros((1, 160, 176, 3))), r"larger than .* = 160"),
        (lambda: ms_ssim(np.zeros((1, 64, 64, 1)), np.zeros((1, 64, 64, 1)), weights=()), r"`weights` must hold"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
