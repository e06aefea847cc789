"""Our params -> the original's PyTorch layouts: an LDM/UPGPT Lightning checkpoint, or diffusers
UNet2DConditionModel / AutoencoderKL folders.

The exporter is the importer run backwards: the Flax trees go through the generic rule's inverse
(`torch_params.flax_to_torch_state_dict`) to diffusers keys, and for LDM through the same
`ldm.key_maps` the importer reads with (`KeyMap.to_ldm`), so the two directions cannot drift
apart. Only what the importer reads is written: the UNet, the VAE, the pose projection (the fusion's
null embeddings and condition statistics have no place in the original) and LatentDiffusion's
`scale_factor`; CLIP stays whatever Hugging Face folder the model loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from upgpt_jax import storage
from upgpt_jax.convert import diffusers_folders, ldm
from upgpt_jax.weights.torch_params import flax_to_torch_state_dict

# LitEma's defaults (ldm/modules/ema.py), for EMA weights whose decay and update count are unknown.
LITEMA_DECAY = 0.9999
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_PARTS = ("unet", "vae")  # Each written to the folder of its name.

PyTree = Any


def ldm_state_dict(
    params: Mapping[str, PyTree],
    model_config: Any,
    *,
    ema_unet: PyTree | None = None,
    ema_decay: float = LITEMA_DECAY,
    ema_updates: int = 0,
    pose_prefix: str = ldm.POSE_PREFIX,
) -> dict[str, np.ndarray]:
    """{LDM checkpoint key: array in torch layout} for the parts of `params` the importer reads.

    With `ema_unet`, LitEma's `model_ema.*` buffers (dot-free names) hold it, with the `decay` and
    `num_updates` bookkeeping, so a LatentDiffusion built with use_ema=True loads it strictly.
    """
    maps = ldm.key_maps(model_config, pose_prefix)
    state_dict: dict[str, np.ndarray] = {}
    for part, tree in _exported_parts(params).items():
        state_dict.update(_to_ldm_keys(tree, maps[part]))
    if ema_unet is not None:
        for key, value in _to_ldm_keys(ema_unet, maps["unet"]).items():
            state_dict[ldm.ema_key(key)] = value
        state_dict[ldm.EMA_DECAY_KEY] = np.asarray(ema_decay, np.float32)
        state_dict[ldm.EMA_UPDATES_KEY] = np.asarray(ema_updates, np.int32)
    state_dict[ldm.SCALE_FACTOR_KEY] = np.asarray(model_config.scale_factor, np.float32)
    return state_dict


def _exported_parts(params: Mapping[str, PyTree]) -> dict[str, PyTree]:
    """The trees that have an LDM/diffusers home: UNet, VAE and the fusion's pose projection."""
    parts = {part: params[part] for part in DIFFUSERS_PARTS if part in params}
    if ldm.POSE_MODULE in params.get("fusion", {}):
        parts["fusion"] = {ldm.POSE_MODULE: params["fusion"][ldm.POSE_MODULE]}
    return parts


def _to_ldm_keys(tree: PyTree, key_map: ldm.KeyMap) -> dict[str, np.ndarray]:
    state_dict = {}
    for key, value in flax_to_torch_state_dict(tree).items():
        ldm_key = key_map.to_ldm(key)
        if ldm_key is None:  # The key maps are built from the same config as the params.
            raise ValueError(
                f"{key}: no LDM name under {key_map.ldm_prefix}; params and config differ"
            )
        state_dict[ldm_key] = key_map.to_ldm_value(key, value)
    return state_dict


def _torch_tensors(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import torch

    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d) and copies only arrays
    # torch could not own (read-only ones, e.g. restored from a checkpoint).
    return {
        key: torch.from_numpy(np.require(value, requirements=["C", "W"]))
        for key, value in state_dict.items()
    }


def write_ldm_checkpoint(state_dict: Mapping[str, np.ndarray], out: str | os.PathLike) -> None:
    """`torch.save({"state_dict": ...})`, the Lightning layout LatentDiffusion's `ckpt_path` and
    our importer read (tensors only: it loads with torch.load(weights_only=True))."""
    import torch

    with storage.local_output(out) as local:  # local or gs://
        torch.save({"state_dict": _torch_tensors(state_dict)}, local)


def write_diffusers_folders(
    params: Mapping[str, PyTree], model_config: Any, out: str | os.PathLike
) -> list[str]:
    """`out/unet` and `out/vae` (config.json + safetensors) for the parts present; returns the
    folders written. diffusers' `from_pretrained` and our `--format diffusers` import read them."""
    from safetensors.torch import save_file

    written = []
    with storage.local_folder(out) as folder:  # local or gs://
        for part in DIFFUSERS_PARTS:
            if part not in params:
                continue
            if part == "unet":
                config = diffusers_folders.unet_folder_config(model_config.unet)
            else:
                scale = model_config.scale_factor
                config = diffusers_folders.vae_folder_config(model_config.vae, scale)
            (folder / part).mkdir(parents=True, exist_ok=True)
            (folder / part / diffusers_folders.CONFIG_FILE).write_text(
                json.dumps(config, indent=2, sort_keys=True) + "\n"
            )
            tensors = _torch_tensors(flax_to_torch_state_dict(params[part]))
            save_file(tensors, folder / part / DIFFUSERS_WEIGHTS, metadata={"format": "pt"})
            written.append(part)
    return written
