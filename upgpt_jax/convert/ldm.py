"""The original LDM/UPGPT checkpoint layout, renamed to the diffusers layout our modules mirror.

The released UPGPT weights are a PyTorch-Lightning `LatentDiffusion` state dict:
  model.diffusion_model.*        openaimodel.UNetModel (spatial transformers, conv proj_in/proj_out)
  model_ema.diffusion_model*     the UNet's EMA copy; LitEma strips the dots from the names
  first_stage_model.*            the KL autoencoder (diffusionmodules/model.py Encoder/Decoder)
  extra_cond_models.1.model.*    the pose projection (poses.LinearProject 85 -> 768)
  cond_stage_model.*, extra_cond_models.0.*, schedule buffers: CLIP and bookkeeping, not
                                 converted here.

Renaming to diffusers keys first (rather than straight to Flax paths) lets one generic rule
(`torch_params.torch_to_flax_params`) do transposes and shape checks for every source, and lets the
renamed dict be checked against diffusers' own PyTorch modules. The block structure is derived
from the UNet/VAE hyper-parameters, so any width or depth maps, not just the released one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from upgpt_jax.convert.part_shapes import abstract_params
from upgpt_jax.weights.params_io import PARTS
from upgpt_jax.weights.torch_params import (
    WeightConversionError,
    flax_to_torch_state_dict,
    torch_to_flax_params,
)

UNET_PREFIX = "model.diffusion_model"
EMA_PREFIX = "model_ema"
VAE_PREFIX = "first_stage_model"
# extra_cond_stages in configs/deepfashion/lowres.yaml: 0 style_cond (CLIP image), 1 pose_cond.
POSE_PREFIX = "extra_cond_models.1.model"
# The pose projection's name in the diffusers-style dict (the generic rule -> fusion/pose_proj).
POSE_MODULE = "pose_proj"
SCALE_FACTOR_KEY = "scale_factor"  # LatentDiffusion's buffer (when scale_by_std is off).
EMA_DECAY_KEY, EMA_UPDATES_KEY = f"{EMA_PREFIX}.decay", f"{EMA_PREFIX}.num_updates"  # LitEma's
EMA_BOOKKEEPING = frozenset({EMA_DECAY_KEY, EMA_UPDATES_KEY})

# Child-module renames inside one module, LDM name -> diffusers name. "" is the module itself.
_LEAF = {"": ""}
_UNET_RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}  # fmt: skip
_VAE_RESNET = {
    "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}  # fmt: skip
# The VAE's mid-block attention: LDM uses 1x1 convs for q/k/v/proj_out, diffusers uses Linear.
_VAE_ATTENTION = {
    "norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0",
}  # fmt: skip
# SpatialTransformer and diffusers' Transformer2DModel name every child alike.
_SAME_NAMES = None

_PARAM_NAMES = ("weight", "bias")


@dataclasses.dataclass(frozen=True)
class _Module:
    diffusers: str
    children: Mapping[str, str] | None  # None: the same names below the module in both layouts.
    linear_from_conv: bool = False  # Squeeze (out, in, 1, 1) conv weights to (out, in) Linear.


class KeyMap:
    """A two-way rename between LDM and diffusers parameter keys, one entry per module."""

    def __init__(self, ldm_prefix: str, not_converted: Sequence[str] = ()):
        """Entries are LDM module paths below `ldm_prefix` (the checkpoint's part prefix); keys
        under `not_converted` module paths (training-only modules) are left alone."""
        self.ldm_prefix = ldm_prefix
        self._modules: dict[str, _Module] = {}
        self._by_diffusers: dict[str, _Module] = {}
        self._ldm_path: dict[str, str] = {}  # diffusers module path -> LDM module path
        self._not_converted = tuple(f"{_join(ldm_prefix, path)}." for path in not_converted)

    def add(
        self,
        ldm_path: str,
        diffusers_path: str,
        children: Mapping[str, str] | None = _LEAF,
        linear_from_conv: bool = False,
    ) -> None:
        """Maps the LDM module at `ldm_path` (below the prefix) to the diffusers module."""
        module = _Module(diffusers_path, children, linear_from_conv)
        ldm_path = _join(self.ldm_prefix, ldm_path)
        self._modules[ldm_path] = module
        self._by_diffusers[diffusers_path] = module
        self._ldm_path[diffusers_path] = ldm_path

    def owns(self, ldm_key: str) -> bool:
        """Whether the key belongs to this part (and so must map, or is unexpected)."""
        under_prefix = ldm_key.startswith(self.ldm_prefix + ".")
        return under_prefix and not ldm_key.startswith(self._not_converted)

    def to_diffusers(self, ldm_key: str) -> str | None:
        """The diffusers key of an LDM key, or None when the key is not part of the architecture."""
        found = _split_key(ldm_key, self._modules)
        if found is None:
            return None
        _, module, child, param = found
        renamed = _rename_child(child, module.children)
        return None if renamed is None else _join(module.diffusers, renamed, param)

    def to_ldm(self, diffusers_key: str) -> str | None:
        """The inverse of `to_diffusers` (names missing keys the way the checkpoint would)."""
        found = _split_key(diffusers_key, self._by_diffusers)
        if found is None:
            return None
        prefix, module, child, param = found
        inverse = None if module.children is None else {v: k for k, v in module.children.items()}
        renamed = _rename_child(child, inverse)
        return None if renamed is None else _join(self._ldm_path[prefix], renamed, param)

    def convert_value(self, ldm_key: str, value: Any) -> Any:
        """Reshapes a value where the two layouts store it differently (1x1 conv -> Linear)."""
        found = _split_key(ldm_key, self._modules)
        squeeze = found is not None and found[1].linear_from_conv and found[3] == "weight"
        if squeeze and value.ndim == 4 and tuple(value.shape[2:]) == (1, 1):
            return value[:, :, 0, 0]
        return value

    def to_ldm_value(self, diffusers_key: str, value: Any) -> Any:
        """The inverse of `convert_value` (for exports): a Linear weight back to LDM's 1x1 conv."""
        found = _split_key(diffusers_key, self._by_diffusers)
        expand = found is not None and found[1].linear_from_conv and found[3] == "weight"
        return value[:, :, None, None] if expand and value.ndim == 2 else value


def _split_key(key: str, modules: Mapping[str, _Module]) -> tuple[str, _Module, str, str] | None:
    """(module prefix, module, child path, param name) for the longest known prefix of `key`."""
    path, _, param = key.rpartition(".")
    if param not in _PARAM_NAMES:
        return None
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix, modules[prefix], ".".join(parts[end:]), param
    return None


def _rename_child(child: str, children: Mapping[str, str] | None) -> str | None:
    return child if children is None else children.get(child)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def unet_key_map(
    channel_mult: Sequence[int],
    num_res_blocks: int,
    attention_levels: Iterable[int],
    prefix: str = UNET_PREFIX,
) -> KeyMap:
    """Module renames for openaimodel.UNetModel -> diffusers UNet2DConditionModel.

    LDM numbers its blocks sequentially (input_blocks.N.M, output_blocks.N.M), so which index
    holds a resnet, a transformer or a resampler follows from the level structure: each level
    has `num_res_blocks` (resnet[, transformer]) blocks, then a downsampler except at the last
    level; the decoder mirrors it with one extra block per level and the upsampler appended to
    the last block of each level but the top one. `attention_levels` are level indices
    (LDM's attention_resolutions are the downsampling factors 2**level).
    """
    attention_levels = set(attention_levels)
    num_levels = len(channel_mult)
    key_map = KeyMap(prefix)
    key_map.add("time_embed.0", "time_embedding.linear_1")
    key_map.add("time_embed.2", "time_embedding.linear_2")
    key_map.add("input_blocks.0.0", "conv_in")
    key_map.add("middle_block.0", "mid_block.resnets.0", _UNET_RESNET)
    key_map.add("middle_block.1", "mid_block.attentions.0", _SAME_NAMES)
    key_map.add("middle_block.2", "mid_block.resnets.1", _UNET_RESNET)
    key_map.add("out.0", "conv_norm_out")
    key_map.add("out.2", "conv_out")
    index = 1
    for level in range(num_levels):
        down = f"down_blocks.{level}"
        for block in range(num_res_blocks):
            key_map.add(f"input_blocks.{index}.0", f"{down}.resnets.{block}", _UNET_RESNET)
            if level in attention_levels:
                key_map.add(f"input_blocks.{index}.1", f"{down}.attentions.{block}", _SAME_NAMES)
            index += 1
        if level != num_levels - 1:
            key_map.add(f"input_blocks.{index}.0.op", f"{down}.downsamplers.0.conv")
            index += 1
    index = 0
    for position, level in enumerate(reversed(range(num_levels))):
        up = f"up_blocks.{position}"
        for block in range(num_res_blocks + 1):
            key_map.add(f"output_blocks.{index}.0", f"{up}.resnets.{block}", _UNET_RESNET)
            layer = 1
            if level in attention_levels:
                key_map.add(f"output_blocks.{index}.1", f"{up}.attentions.{block}", _SAME_NAMES)
                layer = 2
            if level != 0 and block == num_res_blocks:
                key_map.add(f"output_blocks.{index}.{layer}.conv", f"{up}.upsamplers.0.conv")
            index += 1
    return key_map


def vae_key_map(
    channel_mult: Sequence[int], num_res_blocks: int, prefix: str = VAE_PREFIX
) -> KeyMap:
    """Module renames for LDM's Encoder/Decoder (+ quant convs) -> diffusers AutoencoderKL.

    LDM's decoder keeps `up` in resolution order (up.0 is the full-resolution level, built last
    and prepended), while diffusers' up_blocks run in execution order: up.{i} is up_blocks.{L-1-i}.
    """
    num_levels = len(channel_mult)
    # LDM's AutoencoderKL also holds its training loss (LPIPS + discriminator in first-stage ckpts).
    key_map = KeyMap(prefix, not_converted=["loss"])
    key_map.add("quant_conv", "quant_conv")
    key_map.add("post_quant_conv", "post_quant_conv")
    for part in ("encoder", "decoder"):
        key_map.add(f"{part}.conv_in", f"{part}.conv_in")
        key_map.add(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", _VAE_RESNET)
        key_map.add(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", _VAE_ATTENTION, True)
        key_map.add(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", _VAE_RESNET)
        key_map.add(f"{part}.norm_out", f"{part}.conv_norm_out")
        key_map.add(f"{part}.conv_out", f"{part}.conv_out")
    for level in range(num_levels):
        down, up = f"encoder.down_blocks.{level}", f"decoder.up_blocks.{num_levels - 1 - level}"
        for block in range(num_res_blocks):
            key_map.add(
                f"encoder.down.{level}.block.{block}", f"{down}.resnets.{block}", _VAE_RESNET
            )
        if level != num_levels - 1:
            key_map.add(f"encoder.down.{level}.downsample.conv", f"{down}.downsamplers.0.conv")
        for block in range(num_res_blocks + 1):
            key_map.add(f"decoder.up.{level}.block.{block}", f"{up}.resnets.{block}", _VAE_RESNET)
        if level != 0:
            key_map.add(f"decoder.up.{level}.upsample.conv", f"{up}.upsamplers.0.conv")
    return key_map


def pose_key_map(prefix: str = POSE_PREFIX) -> KeyMap:
    """LinearProject's `model` Linear -> our fusion's pose projection."""
    key_map = KeyMap(prefix)
    key_map.add("", POSE_MODULE)
    return key_map


@dataclasses.dataclass
class RenamedPart:
    """One part of a checkpoint in diffusers layout, with where each entry came from."""

    state_dict: dict[str, Any]  # diffusers key -> value
    origin: dict[str, str]  # diffusers key -> checkpoint key (for error messages)
    unexpected: list[str]  # checkpoint keys under the part's prefix that name no parameter


def rename_part(state_dict: Mapping[str, Any], key_map: KeyMap) -> RenamedPart:
    """The entries of `state_dict` under `key_map`'s prefix, renamed to diffusers keys."""
    renamed, origin, unexpected = {}, {}, []
    for key, value in state_dict.items():
        if not key_map.owns(key):
            continue
        target = key_map.to_diffusers(key)
        if target is None:
            unexpected.append(key)
            continue
        renamed[target] = key_map.convert_value(key, value)
        origin[target] = key
    return RenamedPart(renamed, origin, unexpected)


def key_maps(model_config: Any, pose_prefix: str = POSE_PREFIX) -> dict[str, KeyMap]:
    """The renames of every part for `config.model` (its unet and vae hyper-parameters)."""
    unet, vae = model_config.unet, model_config.vae
    return {
        "unet": unet_key_map(unet.channel_mult, unet.num_res_blocks, unet.attention_levels),
        "vae": vae_key_map(vae.channel_mult, vae.num_res_blocks),
        "fusion": pose_key_map(pose_prefix),
    }


def ema_key(unet_key: str) -> str:
    """LitEma's buffer name for a `model.diffusion_model.*` parameter: the dots removed."""
    return f"{EMA_PREFIX}.{unet_key.split('.', 1)[1].replace('.', '')}"


def _rename_ema_unet(
    state_dict: Mapping[str, Any], key_map: KeyMap, expected_keys: Iterable[str]
) -> RenamedPart:
    """The EMA UNet renamed like the UNet; errors name the EMA buffers.

    Dot-free names are matched against the dotted names the UNet has (its expected keys and any
    `model.diffusion_model.*` keys in the checkpoint); EMA buffers matching neither are unexpected.
    """
    known = {*expected_keys, *(key for key in state_dict if key_map.owns(key))}
    dotted = {ema_key(key): key for key in known}
    ema = {
        key: value
        for key, value in state_dict.items()
        if key.startswith(EMA_PREFIX + ".") and key not in EMA_BOOKKEEPING
    }
    part = rename_part({dotted[key]: value for key, value in ema.items() if key in dotted}, key_map)
    return RenamedPart(
        part.state_dict,
        {target: ema_key(source) for target, source in part.origin.items()},
        sorted(
            [ema_key(key) for key in part.unexpected] + [key for key in ema if key not in dotted]
        ),
    )


def _diffusers_key(flax_path: tuple[str, ...]) -> str:
    """The torch key the generic rule maps onto `flax_path`."""
    (key,) = flax_to_torch_state_dict(unflatten_dict({flax_path: np.zeros(())}))
    return key


@dataclasses.dataclass
class Conversion:
    """Converted params ({part: tree}), with what the checkpoint held that was not converted."""

    params: dict[str, Any]
    ignored: list[str]  # checkpoint keys outside the converted parts (CLIP, schedule buffers, ...)
    scale_factor: float | None  # LatentDiffusion's latent scale, when the checkpoint stores it


def convert_ldm_state_dict(
    state_dict: Mapping[str, Any],
    model_config: Any,
    *,
    source: str,
    parts: Sequence[str] = PARTS,
    use_ema: bool = False,
    pose_prefix: str = POSE_PREFIX,
) -> Conversion:
    """Converts an LDM/UPGPT state dict to our params for `config.model`.

    Every key under a converted part's prefix must map onto the model and every parameter must be
    present with its shape; otherwise one `WeightConversionError` lists all problems of all parts,
    named by checkpoint key. With `use_ema` the UNet comes from the `model_ema.*` buffers.
    """
    expected = abstract_params(model_config, parts)
    maps = key_maps(model_config, pose_prefix)
    params: dict[str, Any] = {}
    missing: list[str] = []
    unexpected: list[str] = []
    misshaped: list[str] = []
    converted: set[str] = set()
    for part in parts:
        key_map = maps[part]
        expected_keys = {
            path: key_map.to_ldm(_diffusers_key(path)) for path in flatten_dict(expected[part])
        }
        if part == "unet" and use_ema:
            renamed = _rename_ema_unet(state_dict, key_map, filter(None, expected_keys.values()))
            checkpoint_name = ema_key
        else:
            renamed = rename_part(state_dict, key_map)
            checkpoint_name = str
        converted.update(renamed.origin.values(), renamed.unexpected)
        if not renamed.state_dict and not renamed.unexpected:
            prefix = EMA_PREFIX if part == "unet" and use_ema else key_map.ldm_prefix
            missing.append(
                f"{part}/* (all {len(expected_keys)} parameters): no checkpoint key starts with "
                f"'{prefix}.' (leave the part out of `parts` to skip it)"
            )
            continue
        unexpected += [f"{key} {tuple(state_dict[key].shape)}" for key in renamed.unexpected]
        try:
            params[part] = torch_to_flax_params(renamed.state_dict, expected[part], source=source)
        except WeightConversionError as error:
            missing += [
                _name_missing(line, part, expected_keys, checkpoint_name) for line in error.missing
            ]
            unexpected += [
                _name_checkpoint_key(line, part, renamed.origin) for line in error.unexpected
            ]
            misshaped += [
                _name_checkpoint_key(line, part, renamed.origin) for line in error.misshaped
            ]
    if missing or unexpected or misshaped:
        raise WeightConversionError(source, missing, unexpected, misshaped)
    scale = state_dict.get(SCALE_FACTOR_KEY)
    return Conversion(
        params=params,
        ignored=sorted(key for key in state_dict if key not in converted),
        scale_factor=None if scale is None else float(scale),
    )


def _name_missing(
    line: str,
    part: str,
    expected_keys: Mapping[tuple[str, ...], str | None],
    checkpoint_name: Callable[[str], str],
) -> str:
    """'path (shape)' from the generic rule -> 'part/path (shape), checkpoint key K'."""
    path, _, shape = line.partition(" ")
    ldm_key = expected_keys.get(tuple(path.split("/")))
    where = f", checkpoint key {checkpoint_name(ldm_key)}" if ldm_key else ""
    return f"{part}/{path} {shape}{where}"


def _name_checkpoint_key(line: str, part: str, origin: Mapping[str, str]) -> str:
    """A line that starts with a diffusers key -> the same line naming the checkpoint key."""
    key, _, rest = line.partition(" ")
    rest = rest.replace("-> ", f"-> {part}/", 1)
    return f"{origin.get(key, key)} {rest}"
