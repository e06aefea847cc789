"""diffusers model folders (config.json + weights) -> our UNet and VAE params.

Our modules mirror diffusers' UNet2DConditionModel and AutoencoderKL names, so the weights map
by the generic rule; what needs care is that the folder describes the same architecture as our
config. Every field that changes the structure or the computation is compared (missing fields
take diffusers' defaults) and all differences are reported at once, before any weight is read.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from upgpt_jax.convert.part_shapes import abstract_params
from upgpt_jax.weights.torch_params import torch_to_flax_params
from upgpt_jax.weights.weight_files import (
    StateDict,
    WeightFileError,
    find_weight_file,
    read_state_dict,
    shard_files,
)

CONFIG_FILE = "config.json"
# The folder's weights, the first present winning: a safetensors shard index or one file.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
)

_UNET_DEFAULT_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_UNET_DEFAULT_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
# Fields our modules implement with one fixed setting: {field: (required value, diffusers default)}.
_UNET_FIXED = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn", "UNetMidBlock2DCrossAttn"),
    "flip_sin_to_cos": (True, True),
    "freq_shift": (0, 0),
    "act_fn": ("silu", "silu"),
    "norm_eps": (1e-5, 1e-5),
    "time_embedding_type": ("positional", "positional"),
    "resnet_time_scale_shift": ("default", "default"),
    "conv_in_kernel": (3, 3),
    "conv_out_kernel": (3, 3),
    "only_cross_attention": (False, False),
    "dual_cross_attention": (False, False),
    "class_embed_type": (None, None),
    "num_class_embeds": (None, None),
    "addition_embed_type": (None, None),
    "encoder_hid_dim": (None, None),
    "time_embedding_dim": (None, None),
    "time_cond_proj_dim": (None, None),
    "attention_type": ("default", "default"),
    "resnet_skip_time_act": (False, False),
    "timestep_post_act": (None, None),
    "cross_attention_norm": (None, None),
    "addition_time_embed_dim": (None, None),
    "projection_class_embeddings_input_dim": (None, None),
    "reverse_transformer_layers_per_block": (None, None),
    "center_input_sample": (False, False),
    "downsample_padding": (1, 1),
    "mid_block_scale_factor": (1, 1),
    "resnet_out_scale_factor": (1.0, 1.0),
    "time_embedding_act_fn": (None, None),
}
_VAE_FIXED = {
    "act_fn": ("silu", "silu"),
    "mid_block_add_attention": (True, True),
    "use_quant_conv": (True, True),
    "use_post_quant_conv": (True, True),
}
# Renames for AutoencoderKL folders saved before diffusers 0.14 (mid-block attention names).
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class ConfigMismatchError(ValueError):
    """A diffusers config that describes another architecture than ours."""


def _per_block(value: Any, count: int) -> list[Any]:
    """diffusers accepts one value or one per block for several fields."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def unet_folder_config(unet: Any) -> dict[str, Any]:
    """The UNet2DConditionModel config.json fields that describe `config.model.unet`: what an
    export writes, and what `unet_config_differences` requires of an imported folder."""
    down = [
        "CrossAttnDownBlock2D" if level in unet.attention_levels else "DownBlock2D"
        for level in range(len(unet.channel_mult))
    ]
    return {
        "_class_name": "UNet2DConditionModel",
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "block_out_channels": [unet.channels * m for m in unet.channel_mult],
        "down_block_types": down,
        "up_block_types": [name.replace("Down", "Up") for name in reversed(down)],
        "layers_per_block": unet.num_res_blocks,
        # diffusers reads attention_head_dim as the number of heads when num_attention_heads is
        # unset (SD1's configs); both spellings are accepted on import.
        "attention_head_dim": unet.num_heads,
        "transformer_layers_per_block": unet.transformer_depth,
        "cross_attention_dim": unet.context_dim,
        "norm_num_groups": unet.norm_groups,
        "use_linear_projection": unet.use_linear_projection,
        **{field: required for field, (required, _) in _UNET_FIXED.items()},
    }


def unet_config_differences(folder: Mapping[str, Any], unet: Any) -> list[str]:
    """'field: folder has X, our config needs Y' for each field of a UNet2DConditionModel config
    that does not describe `config.model.unet`."""
    levels = len(unet.channel_mult)
    needed = unet_folder_config(unet)
    heads = folder.get("num_attention_heads") or folder.get("attention_head_dim", 8)
    get = folder.get
    compared = {
        "in_channels": (get("in_channels", 4), unet.in_channels),
        "out_channels": (get("out_channels", 4), unet.out_channels),
        "block_out_channels (channels * channel_mult)": (
            list(get("block_out_channels", (320, 640, 1280, 1280))),
            needed["block_out_channels"],
        ),
        "down_block_types (attention_levels)": (
            list(get("down_block_types", _UNET_DEFAULT_DOWN)),
            needed["down_block_types"],
        ),
        "up_block_types (attention_levels)": (
            list(get("up_block_types", _UNET_DEFAULT_UP)),
            needed["up_block_types"],
        ),
        "layers_per_block (num_res_blocks)": (
            _per_block(get("layers_per_block", 2), levels),
            [unet.num_res_blocks] * levels,
        ),
        "attention_head_dim / num_attention_heads (num_heads)": (
            _per_block(heads, levels),
            [unet.num_heads] * levels,
        ),
        "transformer_layers_per_block (transformer_depth)": (
            _per_block(get("transformer_layers_per_block", 1), levels),
            [unet.transformer_depth] * levels,
        ),
        "cross_attention_dim (context_dim)": (get("cross_attention_dim", 1280), unet.context_dim),
        "norm_num_groups (norm_groups)": (get("norm_num_groups", 32), unet.norm_groups),
        "use_linear_projection": (get("use_linear_projection", False), unet.use_linear_projection),
        **{
            field: (get(field, default), required)
            for field, (required, default) in _UNET_FIXED.items()
        },
    }
    return _differences(compared)


def vae_folder_config(vae: Any, scaling_factor: float | None = None) -> dict[str, Any]:
    """The AutoencoderKL config.json of `config.model.vae` (as `unet_folder_config`), with the
    latent scale the diffusion model was trained with when given (diffusers pipelines read it)."""
    levels = len(vae.channel_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": vae.in_channels,
        "out_channels": vae.out_channels,
        "block_out_channels": [vae.channels * m for m in vae.channel_mult],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": vae.num_res_blocks,
        "latent_channels": vae.z_channels,
        "norm_num_groups": vae.norm_groups,
        **({} if scaling_factor is None else {"scaling_factor": scaling_factor}),
        **{field: required for field, (required, _) in _VAE_FIXED.items()},
    }


def vae_config_differences(folder: Mapping[str, Any], vae: Any) -> list[str]:
    """As `unet_config_differences`, for an AutoencoderKL config against `config.model.vae`."""
    needed = vae_folder_config(vae)
    get = folder.get
    compared = {
        "in_channels": (get("in_channels", 3), vae.in_channels),
        "out_channels": (get("out_channels", 3), vae.out_channels),
        "block_out_channels (channels * channel_mult)": (
            list(get("block_out_channels", (64,))),
            needed["block_out_channels"],
        ),
        "down_block_types": (
            list(get("down_block_types", ("DownEncoderBlock2D",))),
            needed["down_block_types"],
        ),
        "up_block_types": (
            list(get("up_block_types", ("UpDecoderBlock2D",))),
            needed["up_block_types"],
        ),
        "layers_per_block (num_res_blocks)": (get("layers_per_block", 1), vae.num_res_blocks),
        "latent_channels (z_channels)": (get("latent_channels", 4), vae.z_channels),
        "norm_num_groups (norm_groups)": (get("norm_num_groups", 32), vae.norm_groups),
        **{
            field: (get(field, default), required)
            for field, (required, default) in _VAE_FIXED.items()
        },
    }
    return _differences(compared)


def _differences(compared: Mapping[str, tuple[Any, Any]]) -> list[str]:
    return [
        f"{field}: folder has {found!r}, our config needs {needed!r}"
        for field, (found, needed) in compared.items()
        if found != needed
    ]


def read_config(directory: str | pathlib.Path) -> dict[str, Any]:
    """config.json of a diffusers model folder."""
    config_path = pathlib.Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise WeightFileError(f"{directory} is not a diffusers model folder: no {CONFIG_FILE}")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise WeightFileError(f"{config_path}: invalid JSON ({error})") from error


def _checked_config(
    directory: str | pathlib.Path,
    class_name: str,
    differences: Callable,
    section: Any,
    section_name: str,
) -> dict[str, Any]:
    config = read_config(directory)
    found = config.get("_class_name", class_name)
    if found != class_name:
        raise ConfigMismatchError(f"{directory}: a {found} folder, expected {class_name}")
    mismatches = differences(config, section)
    if mismatches:
        raise ConfigMismatchError(
            f"{directory}/{CONFIG_FILE} does not match config.model.{section_name}:\n  "
            + "\n  ".join(mismatches)
        )
    return config


def load_diffusers_unet(
    directory: str | pathlib.Path, model_config: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, info) of a diffusers UNet2DConditionModel folder, checked against
    `config.model.unet`."""
    _checked_config(
        directory, "UNet2DConditionModel", unet_config_differences, model_config.unet, "unet"
    )
    weight_file = find_weight_file(directory, WEIGHT_FILES)
    expected = abstract_params(model_config, ["unet"])["unet"]
    params = torch_to_flax_params(read_state_dict(weight_file), expected, source=str(directory))
    return params, {"files": [str(path) for path in shard_files(weight_file)]}


def load_diffusers_vae(
    directory: str | pathlib.Path, model_config: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, info) of a diffusers AutoencoderKL folder checked against `config.model.vae`.

    info carries the folder's `scaling_factor`, the latent scale the diffusion model used.
    """
    config = _checked_config(
        directory, "AutoencoderKL", vae_config_differences, model_config.vae, "vae"
    )
    weight_file = find_weight_file(directory, WEIGHT_FILES)
    expected = abstract_params(model_config, ["vae"])["vae"]
    state_dict = _rename_legacy_attention(read_state_dict(weight_file))
    params = torch_to_flax_params(state_dict, expected, source=str(directory))
    return params, {
        "files": [str(path) for path in shard_files(weight_file)],
        "scaling_factor": config.get("scaling_factor"),
    }


def _rename_legacy_attention(state_dict: StateDict) -> StateDict:
    """`mid_block.attentions.0.query.weight` (old diffusers) -> `...attentions.0.to_q.weight`."""
    renamed = {}
    for key, value in state_dict.items():
        head, _, leaf = key.rpartition(".")
        module, _, child = head.rpartition(".")
        if ".mid_block.attentions." in key and child in _LEGACY_VAE_ATTENTION:
            key = f"{module}.{_LEGACY_VAE_ATTENTION[child]}.{leaf}"
        renamed[key] = value
    return renamed
