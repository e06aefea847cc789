"""The FID Inception network (pytorch-fid's `InceptionV3([3])`) in Flax, NHWC, from a local weight file.

FID and KID compare images through the 2048-d pool3 features of the TensorFlow Inception graph of
2015-12-05, the one TTUR's FID code used. pytorch-fid ships it as `pt_inception-2015-12-05-6726825d.pth`
(a torchvision `Inception3` state dict, 1008 classes) and runs it as torchvision's Inception3 with
four blocks patched to the TF graph; torch-fidelity re-implements the same graph. This module is that
network:
- input: images in [0, 1] of any size, resized to 299x299 bilinearly with half-pixel centres and no
  antialiasing (pytorch-fid's `F.interpolate(mode='bilinear', align_corners=False)`), then mapped
  to [-1, 1] (`2x - 1`);
- every conv is conv (no bias) -> BatchNorm (eval mode, eps 0.001) -> ReLU (torchvision's BasicConv2d);
- Mixed_5b..d, Mixed_6b..e and Mixed_7b pool their pooling branch with a 3x3 average that ignores the
  padding (TF's pooling, pytorch-fid's `count_include_pad=False`); Mixed_7c max-pools there (a quirk
  of the TF graph that pytorch-fid keeps);
- output: the spatial mean of Mixed_7c, (B, 2048), float32.

Parameter names are the state dict's keys under the project's generic rule (`Mixed_5b.branch1x1.conv.weight`
-> `Mixed_5b/branch1x1/conv/kernel`; `bn.weight` -> `bn/scale`; `bn.running_mean`/`running_var` stay),
so `torch_to_flax_params` converts the file. Nothing is downloaded: fetch the file yourself from
`FID_WEIGHTS_URL` (pytorch-fid's release) where a network is available.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from upgpt_jax.weights.torch_params import torch_to_flax_params
from upgpt_jax.weights.weight_files import WeightFileNotFoundError, find_weight_file, read_state_dict
from upgpt_jax.models.layers import CONV_AXES, NORM_AXES, Array, Dtype

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_NORM_EPS = 1e-3
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
# Looked for in a folder, in order: pytorch-fid's file, torch-fidelity's copy of it (same keys), a
# safetensors conversion.
WEIGHT_FILES = (FID_WEIGHTS_FILE, "weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05.safetensors")
# Keys of the file the features do not use: the 1008-way classifier and BatchNorm's step counters.
_IGNORED_PREFIXES = ("fc.",)
_IGNORED_SUFFIXES = (".num_batches_tracked",)


class FrozenBatchNorm(nn.Module):
    """BatchNorm in eval mode with the running statistics as parameters (the network is never
    trained here, and keeping them in `params` lets one state dict map onto one tree)."""

    epsilon: float = BATCH_NORM_EPS
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]

        def param(name: str, init: Any) -> Array:
            initializer = nn.with_logical_partitioning(init, NORM_AXES)
            return self.param(name, initializer, (channels,), self.param_dtype).astype(jnp.float32)

        scale, bias = param("scale", nn.initializers.ones_init()), param("bias", nn.initializers.zeros_init())
        mean = param("running_mean", nn.initializers.zeros_init())
        variance = param("running_var", nn.initializers.ones_init())
        multiplier = scale * jax.lax.rsqrt(variance + self.epsilon)
        return (x.astype(jnp.float32) - mean) * multiplier + bias


class BasicConv(nn.Module):
    """torchvision's BasicConv2d: conv without bias, BatchNorm, ReLU. `same` pads by half the
    kernel (the network's padded convs are all stride 1); otherwise no padding."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    same: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        padding = [(k // 2, k // 2) if self.same else (0, 0) for k in self.kernel]
        # Full fp32 products: the features should not depend on an accelerator's TF32 default.
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=padding, use_bias=False,
                    dtype=self.dtype, param_dtype=self.param_dtype, precision=jax.lax.Precision.HIGHEST,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
                    name="conv")(x)
        return nn.relu(FrozenBatchNorm(param_dtype=self.param_dtype, name="bn")(x)).astype(self.dtype)


def _same_avg_pool(x: Array) -> Array:
    """3x3 stride-1 average over the unpadded neighbours (TF's, pytorch-fid's count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _reduction_max_pool(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    """What every Inception block shares: the precision fields and a factory for its convs."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def conv(self, name: str, features: int, kernel: int | tuple[int, int], *, stride: int = 1,
             same: bool = False) -> BasicConv:
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        return BasicConv(features, kernel, stride, same, self.dtype, self.param_dtype, name=name)


class InceptionA(_Block):
    """35x35 block (Mixed_5b..d)."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        branch5x5 = self.conv("branch5x5_2", 64, 5, same=True)(self.conv("branch5x5_1", 48, 1)(x))
        branch3x3dbl = self.conv("branch3x3dbl_1", 64, 1)(x)
        branch3x3dbl = self.conv("branch3x3dbl_2", 96, 3, same=True)(branch3x3dbl)
        branch3x3dbl = self.conv("branch3x3dbl_3", 96, 3, same=True)(branch3x3dbl)
        branch_pool = self.conv("branch_pool", self.pool_features, 1)(_same_avg_pool(x))
        return jnp.concatenate([self.conv("branch1x1", 64, 1)(x), branch5x5, branch3x3dbl, branch_pool], -1)


class InceptionB(_Block):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        branch3x3 = self.conv("branch3x3", 384, 3, stride=2)(x)
        branch3x3dbl = self.conv("branch3x3dbl_1", 64, 1)(x)
        branch3x3dbl = self.conv("branch3x3dbl_2", 96, 3, same=True)(branch3x3dbl)
        branch3x3dbl = self.conv("branch3x3dbl_3", 96, 3, stride=2)(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _reduction_max_pool(x)], -1)


class InceptionC(_Block):
    """17x17 block with factorised 7x7 convs (Mixed_6b..e)."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        branch7x7 = self.conv("branch7x7_1", c7, 1)(x)
        branch7x7 = self.conv("branch7x7_2", c7, (1, 7), same=True)(branch7x7)
        branch7x7 = self.conv("branch7x7_3", 192, (7, 1), same=True)(branch7x7)
        branch7x7dbl = self.conv("branch7x7dbl_1", c7, 1)(x)
        for index, (features, kernel) in enumerate(((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))), 2):
            branch7x7dbl = self.conv(f"branch7x7dbl_{index}", features, kernel, same=True)(branch7x7dbl)
        branch_pool = self.conv("branch_pool", 192, 1)(_same_avg_pool(x))
        return jnp.concatenate([self.conv("branch1x1", 192, 1)(x), branch7x7, branch7x7dbl, branch_pool], -1)


class InceptionD(_Block):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        branch3x3 = self.conv("branch3x3_2", 320, 3, stride=2)(self.conv("branch3x3_1", 192, 1)(x))
        branch7x7x3 = self.conv("branch7x7x3_1", 192, 1)(x)
        branch7x7x3 = self.conv("branch7x7x3_2", 192, (1, 7), same=True)(branch7x7x3)
        branch7x7x3 = self.conv("branch7x7x3_3", 192, (7, 1), same=True)(branch7x7x3)
        branch7x7x3 = self.conv("branch7x7x3_4", 192, 3, stride=2)(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _reduction_max_pool(x)], -1)


class InceptionE(_Block):
    """8x8 block with split 1x3/3x1 convs (Mixed_7b pools by average, Mixed_7c by max: `max_pool`)."""

    max_pool: bool = False

    def split(self, prefix: str, x: Array) -> Array:
        return jnp.concatenate([self.conv(f"{prefix}a", 384, (1, 3), same=True)(x),
                                self.conv(f"{prefix}b", 384, (3, 1), same=True)(x)], -1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        branch3x3 = self.split("branch3x3_2", self.conv("branch3x3_1", 384, 1)(x))
        branch3x3dbl = self.conv("branch3x3dbl_2", 384, 3, same=True)(self.conv("branch3x3dbl_1", 448, 1)(x))
        branch3x3dbl = self.split("branch3x3dbl_3", branch3x3dbl)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _same_avg_pool(x)
        branch_pool = self.conv("branch_pool", 192, 1)(pooled)
        return jnp.concatenate([self.conv("branch1x1", 320, 1)(x), branch3x3, branch3x3dbl, branch_pool], -1)


def resize_bilinear(images: Array, height: int, width: int) -> Array:
    """(B, H, W, C) -> (B, height, width, C) as torch's `F.interpolate(mode='bilinear',
    align_corners=False)`: half-pixel centres, two taps, no antialiasing when shrinking."""
    shape = (images.shape[0], height, width, images.shape[-1])
    return jax.image.resize(images, shape, method="linear", antialias=False)


class FIDInceptionV3(nn.Module):
    """`FIDInceptionV3()(images) -> (B, 2048)` pool3 features of NHWC images (see the module doc).

    `resize_input`/`normalize_input` are pytorch-fid's flags: resize to 299x299, map [0, 1] to [-1, 1].
    """

    resize_input: bool = True
    normalize_input: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FID Inception takes (B, H, W, 3) images, got shape {images.shape}")
        x = images.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x, INPUT_SIZE, INPUT_SIZE)
        if self.normalize_input:
            x = 2.0 * x - 1.0
        x = x.astype(self.dtype)
        blocks = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(BasicConv, **blocks)
        x = conv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = _reduction_max_pool(conv(64, (3, 3), same=True, name="Conv2d_2b_3x3")(x))
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = _reduction_max_pool(conv(192, (3, 3), name="Conv2d_4a_3x3")(x))
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features=pool_features, name=name, **blocks)(x)
        x = InceptionB(name="Mixed_6a", **blocks)(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels_7x7=channels, name=name, **blocks)(x)
        x = InceptionD(name="Mixed_7a", **blocks)(x)
        x = InceptionE(name="Mixed_7b", **blocks)(x)
        x = InceptionE(max_pool=True, name="Mixed_7c", **blocks)(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


@functools.partial(jax.jit, static_argnums=0)
def inception_features(module: FIDInceptionV3, params: Any, images: Array) -> Array:
    """(B, 2048) float32 features of (B, H, W, 3) images in [0, 1]; compiled once per module and
    input shape (feed fixed-size batches, padding the last one, to avoid recompiles)."""
    return module.apply({"params": params}, images)


def expected_params(module: FIDInceptionV3) -> Any:
    """The params tree of `module` as shapes (no computation)."""
    images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return nn.unbox(jax.eval_shape(module.init, jax.random.key(0), images))["params"]


def _used_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state_dict.items()
            if not key.startswith(_IGNORED_PREFIXES) and not key.endswith(_IGNORED_SUFFIXES)}


def load_fid_inception(path: str | os.PathLike, *, dtype: Dtype = jnp.float32) -> tuple[FIDInceptionV3, Any]:
    """(the network, its params as numpy arrays) from pytorch-fid's weight file.

    `path` is the file (.pth read with torch.load(weights_only=True), or .safetensors with the same
    keys) or a folder holding one of `WEIGHT_FILES`. The classifier (`fc.*`) and BatchNorm counters
    are ignored; every other key must be there with its shape, and no other key may be (a torchvision
    ImageNet Inception file, with its AuxLogits, is refused). Raises WeightFileNotFoundError naming the
    expected file, or WeightConversionError naming the file and every missing/unexpected/misshaped key.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = find_weight_file(path, WEIGHT_FILES)
    elif not path.is_file():
        raise WeightFileNotFoundError(
            f"FID Inception weights not found at {path}: expected pytorch-fid's {FID_WEIGHTS_FILE} "
            f"(download it from {FID_WEIGHTS_URL}; nothing is downloaded here) or a .safetensors with its keys"
        )
    module = FIDInceptionV3(dtype=dtype)
    source = f"{path} (expected pytorch-fid's FID Inception weights, {FID_WEIGHTS_FILE})"
    params = torch_to_flax_params(_used_keys(read_state_dict(path)), expected_params(module), source=source)
    return module, params
