"""LPIPS (Zhang et al. 2018, the `lpips` package's v0.1 metric) in Flax, NHWC, from local weight files.

The distance between two images: both go through a frozen ImageNet backbone (torchvision's VGG16
or AlexNet `features`) after lpips' ScalingLayer; at five ReLU outputs (VGG16 relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3; AlexNet relu1..relu5) each feature vector is divided by its channel
norm, the squared difference is weighted per channel by a learned non-negative 1x1 head (`linK`,
no bias), averaged over space, and the five layer terms are summed. This is also the perceptual
loss of LDM's autoencoder training (taming's LPIPS: VGG16, same heads and constants).

Weights come from two local files, nothing is downloaded:
- the backbone: a torchvision `vgg16` / `alexnet` state dict (`features.N.weight/bias`; the
  classifier keys, if present, are ignored), .pth/.pt (read with torch.load(weights_only=True))
  or .safetensors;
- the heads: lpips' `weights/v0.1/vgg.pth` / `alex.pth` (`lin0.model.1.weight` .. `lin4...`),
  which ship inside the `lpips` wheel (taming-transformers' `vgg.pth` has the same keys).
`load_lpips_from_folder` finds both in one folder under the names in `BACKBONE_FILES`/`HEAD_FILES`.

Input scaling. lpips expects images in [-1, 1]; `normalize_from_unit_range=True` maps [0, 1]
inputs there first (lpips' `normalize=True`). UPGPT's own evaluation (scripts/eval_metrics.py)
loaded images with torchvision's ToTensor ([0, 1]) and called `lpips.LPIPS(net='vgg')(sample, gt)`
WITHOUT normalize=True, so its reported LPIPS scores [0, 1] images as if they were [-1, 1] ones
(a compressed, shifted input range; the numbers are not comparable with correctly scaled LPIPS).
To reproduce its numbers, pass [0, 1] images with the flag False (the default); for the correct
metric, pass [-1, 1] images with the flag False or [0, 1] images with it True.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from upgpt_jax.weights.torch_params import torch_key_to_flax_path, torch_to_flax_params
from upgpt_jax.weights.weight_files import WeightFileNotFoundError, find_weight_file, read_state_dict
from upgpt_jax.models.layers import CONV_AXES, Array, Dtype, partitioned_conv

# lpips' ScalingLayer: (x - shift) / scale turns [-1, 1] images into roughly ImageNet-normalised ones.
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # lpips.normalize_tensor: f / (||f|| + eps)

# File names looked for in a weights folder (config.train.vae.lpips_path), in order of preference.
# The torchvision names are those of its download cache (~/.cache/torch/hub/checkpoints).
BACKBONE_FILES = {
    "vgg": ("vgg16.safetensors", "vgg16.pth", "vgg16-397923af.pth"),
    "alex": ("alexnet.safetensors", "alexnet.pth", "alexnet-owt-7be5be79.pth"),
}
HEAD_FILES = {"vgg": ("vgg.safetensors", "vgg.pth"), "alex": ("alex.safetensors", "alex.pth")}
_HEAD_KEY = re.compile(r"lin(\d+)\.model\.1\.weight")


@dataclasses.dataclass(frozen=True)
class _Conv:
    """A conv + ReLU of torchvision's `features`; `index` is the conv's position there."""

    index: int
    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1


@dataclasses.dataclass(frozen=True)
class _MaxPool:
    window: int
    stride: int


def _vgg16_stages() -> tuple[tuple[_Conv | _MaxPool, ...], ...]:
    """torchvision's vgg16 `features` (config "D") cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
    stages, index = [], 0
    for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        layers: list[_Conv | _MaxPool] = []
        if stage:
            layers.append(_MaxPool(2, 2))
            index += 1
        for _ in range(convs):
            layers.append(_Conv(index, width))
            index += 2  # the conv and its ReLU
        stages.append(tuple(layers))
    return tuple(stages)


BACKBONES = {
    "vgg": _vgg16_stages(),
    "alex": (
        (_Conv(0, 64, kernel_size=11, stride=4, padding=2),),
        (_MaxPool(3, 2), _Conv(3, 192, kernel_size=5, padding=2)),
        (_MaxPool(3, 2), _Conv(6, 384)),
        (_Conv(8, 256),),
        (_Conv(10, 256),),
    ),
}
TORCHVISION_NAMES = {"vgg": "vgg16", "alex": "alexnet"}


def _check_net(net: str) -> None:
    if net not in BACKBONES:
        raise ValueError(f"LPIPS net must be one of {sorted(BACKBONES)}, got {net!r}")


def _unit_normalise(features: Array) -> Array:
    """lpips.normalize_tensor over channels. Same values; where a feature vector is all zero
    (ReLU outputs can be) the norm's gradient is taken as 0 instead of torch's 0 * inf = NaN."""
    squared = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
    positive = squared > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    return features / (norm + NORM_EPS)


class LPIPS(nn.Module):
    """`LPIPS(net)(x, y) -> (B,)` distances between NHWC image batches of equal shape.

    Backbone convs compute in `dtype`; normalisation, heads and averages in float32. Parameter
    names follow the weight files: `features_N` (torchvision's `features.N`) and `linK`.
    """

    net: str = "vgg"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, y: Array, normalize_from_unit_range: bool = False) -> Array:
        _check_net(self.net)
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS compares two (B, H, W, 3) batches of equal shape, got {x.shape} and {y.shape}")
        images = jnp.concatenate([x, y], axis=0).astype(jnp.float32)
        if normalize_from_unit_range:
            images = 2.0 * images - 1.0
        h = ((images - jnp.asarray(SCALING_SHIFT)) / jnp.asarray(SCALING_SCALE)).astype(self.dtype)
        distance = jnp.zeros((x.shape[0],), jnp.float32)
        for level, stage in enumerate(BACKBONES[self.net]):
            for layer in stage:
                if isinstance(layer, _MaxPool):
                    h = nn.max_pool(h, (layer.window,) * 2, strides=(layer.stride,) * 2, padding="VALID")
                else:
                    conv = partitioned_conv(layer.features, layer.kernel_size, strides=layer.stride,
                                            padding=layer.padding, name=f"features_{layer.index}",
                                            dtype=self.dtype, param_dtype=self.param_dtype)
                    h = nn.relu(conv(h))
            features_x, features_y = jnp.split(_unit_normalise(h.astype(jnp.float32)), 2, axis=0)
            head = nn.Conv(1, (1, 1), use_bias=False, name=f"lin{level}", dtype=jnp.float32,
                           param_dtype=self.param_dtype,
                           kernel_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), CONV_AXES))
            distance = distance + jnp.mean(head(jnp.square(features_x - features_y)), axis=(1, 2, 3))
        return distance


def lpips_distance(params: Any, x: Array, y: Array, net: str = "vgg", *,
                   normalize_from_unit_range: bool = False) -> Array:
    """LPIPS(x, y) per example, (B,) float32, with params from `load_lpips` (see the module doc
    for the input range and `normalize_from_unit_range`)."""
    return LPIPS(net=net).apply({"params": params}, x, y, normalize_from_unit_range)


def _expected_params(net: str) -> dict[str, Any]:
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(LPIPS(net=net).init, jax.random.key(0), image, image)
    return nn.unbox(shapes)["params"]


def _backbone_description(net: str) -> str:
    last = BACKBONES[net][-1][-1].index
    return (f"a torchvision {TORCHVISION_NAMES[net]} state dict (features.0.weight, features.0.bias, ..., "
            f"features.{last}.bias) as .pth/.pt or .safetensors")


def _heads_description(net: str) -> str:
    return (f"lpips' linear heads for {net} (lin0.model.1.weight .. lin4.model.1.weight, e.g. the lpips "
            f"package's weights/v0.1/{net}.pth)")


def _read(path: str | os.PathLike, what: str, description: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise WeightFileNotFoundError(f"LPIPS {what} weights not found at {path}: expected {description}")
    return read_state_dict(path)


def load_lpips(net: str, backbone_path: str | os.PathLike,
               heads_path: str | os.PathLike) -> tuple[LPIPS, dict[str, Any]]:
    """(the LPIPS module, its params as numpy arrays) from a torchvision backbone file and lpips'
    heads file. Raises FileNotFoundError / WeightConversionError naming the file and what it
    should hold when a file is missing or its tensors do not fit."""
    _check_net(net)
    expected = _expected_params(net)
    backbone_expected = {name: leaf for name, leaf in expected.items() if name.startswith("features_")}
    heads_expected = {name: leaf for name, leaf in expected.items() if name.startswith("lin")}

    description = _backbone_description(net)
    state = _read(backbone_path, f"{net} backbone", description)
    features = {key: value for key, value in state.items() if key.startswith("features.")}
    params = torch_to_flax_params(features, backbone_expected, source=f"{backbone_path} (expected {description})")

    description = _heads_description(net)
    state = _read(heads_path, f"{net} linear-head", description)
    heads = {key: value for key, value in state.items() if _HEAD_KEY.fullmatch(key)}
    params.update(torch_to_flax_params(
        heads, heads_expected, source=f"{heads_path} (expected {description})",
        key_to_path=lambda key: torch_key_to_flax_path(key.replace(".model.1.", ".")),
    ))
    return LPIPS(net=net), params


def load_lpips_from_folder(folder: str | os.PathLike, net: str) -> tuple[LPIPS, dict[str, Any]]:
    """`load_lpips` with both files found in `folder` by the names in BACKBONE_FILES / HEAD_FILES
    (what config.train.vae.lpips_path points to)."""
    _check_net(net)
    return load_lpips(net, find_weight_file(folder, BACKBONE_FILES[net]), find_weight_file(folder, HEAD_FILES[net]))
