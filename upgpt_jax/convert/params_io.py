"""Reading PyTorch weight files and writing/reading our converted parameter trees.

Converted weights live in one directory:
  DIR/params/          an orbax PyTree checkpoint of {"unet": ..., "vae": ..., "fusion": {...}}
  DIR/metadata.json    where they came from (files, format, config, date) and what was ignored
Any sub-tree may be absent (e.g. a UNet-only import). Loading needs no model code, so the
sampling and training entry points can restore weights, optionally straight onto shardings.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

# The sub-trees of a converted-params tree, each optional.
PARTS = ("unet", "vae", "fusion")
PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

PyTree = Any
# Tensors as stored (torch tensors, or numpy arrays where torch is absent); the generic rule
# (torch_params.torch_to_flax_params) converts only what it uses, to the params' dtype.
StateDict = dict[str, Any]


class WeightFileError(ValueError):
    """A weight file or converted-params directory that cannot be read."""


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """A flat {key: tensor} from .safetensors, .ckpt/.pt/.pth/.bin.

    PyTorch files are read with `torch.load(weights_only=True)` (never a plain unpickler); a
    Lightning checkpoint's `state_dict` entry is used when present.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightFileError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    raise WeightFileError(
        f"{path}: unknown weight file type {path.suffix!r}; "
        f"expected .safetensors or one of {TORCH_SUFFIXES}"
    )


def _read_safetensors(path: pathlib.Path) -> StateDict:
    from safetensors import SafetensorError, safe_open

    try:  # The torch view reads bfloat16, which numpy cannot; torch is optional for safetensors.
        import torch  # noqa: F401

        framework = "pt"
    except ImportError:
        framework = "numpy"
    try:
        with safe_open(path, framework=framework) as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise WeightFileError(f"{path}: not a readable safetensors file ({error})") from error


def _read_torch(path: pathlib.Path) -> StateDict:
    try:
        import torch
    except ImportError as error:
        raise WeightFileError(
            f"{path}: reading PyTorch files needs torch (pip install torch), or convert the "
            "file to .safetensors"
        ) from error
    contents, stubbed = _torch_load(path)
    state_dict = contents.get("state_dict", contents) if isinstance(contents, dict) else None
    tensors = (
        {}
        if not isinstance(state_dict, Mapping)
        else {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    )
    if not tensors:
        found = sorted(contents)[:20] if isinstance(contents, dict) else type(contents).__name__
        raise WeightFileError(
            f"{path}: no tensors found; expected a state dict or a dict with a 'state_dict' "
            f"entry, got {found}"
            + (f" (objects of {sorted(stubbed)} were skipped)" if stubbed else "")
        )
    return tensors


class _SkippedObject:
    """Stands in for a non-tensor object of a checkpoint (optimizer/callback state, configs).

    Lightning checkpoints pickle such objects beside the weights; `weights_only` loading refuses
    any class it does not know. Allowing these inert stand-ins instead of the real classes keeps
    the restricted unpickler (no code from the file runs, nothing is imported) while the tensors
    load. The stand-ins only absorb their arguments and state.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _torch_load(path: pathlib.Path) -> tuple[Any, list[str]]:
    """torch.load(weights_only=True), with inert stand-ins for the non-tensor classes it names."""
    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    try:
        unsafe = sorted(get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as error:  # Not a torch zip file, truncated, or an old (non-zip) format.
        unsafe, listing_error = [], error
    else:
        listing_error = None
    stand_ins = [(type(name.rpartition(".")[2], (_SkippedObject,), {}), name) for name in unsafe]
    try:
        with safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True), unsafe
    except Exception as error:
        detail = f"; listing its classes failed: {listing_error}" if listing_error else ""
        raise WeightFileError(
            f"{path}: cannot be read with torch.load(weights_only=True): {error}{detail}. "
            "Re-save just the weights where the original code runs, e.g. "
            "torch.save(torch.load(path)['state_dict'], 'weights.pt'), or as .safetensors."
        ) from error


def save_params(directory: str | os.PathLike, params: PyTree, metadata: Mapping[str, Any]) -> None:
    """Writes `params` (an orbax PyTree checkpoint) and `metadata` (JSON) to `directory`.

    The directory must not already hold converted params, so an import never silently mixes
    with an older one.
    """
    directory = pathlib.Path(directory).absolute()
    if (directory / PARAMS_DIR).exists():
        raise WeightFileError(
            f"{directory / PARAMS_DIR} already exists; choose a new output directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    (directory / METADATA_FILE).write_text(
        json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n"
    )


def load_params(
    directory: str | os.PathLike, target: PyTree | None = None
) -> tuple[PyTree, dict[str, Any]]:
    """(params, metadata) written by `save_params`.

    `target` is an optional abstract tree (jax.ShapeDtypeStruct leaves, with shardings to restore
    onto devices); without it arrays come back as they were saved (numpy on the host).
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        raise WeightFileError(f"converted params directory not found: {directory}")
    missing = [name for name in (PARAMS_DIR, METADATA_FILE) if not (directory / name).exists()]
    if missing:
        raise WeightFileError(
            f"{directory} is not a converted-params directory: missing {missing} "
            "(write one with `python -m upgpt_jax.convert`)"
        )
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
    except json.JSONDecodeError as error:
        raise WeightFileError(f"{directory / METADATA_FILE}: invalid JSON ({error})") from error
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(directory / PARAMS_DIR, target)
    except Exception as error:
        raise WeightFileError(
            f"{directory / PARAMS_DIR}: cannot restore the params ({error})"
        ) from error
    return params, metadata


def abstract_params(model_config: Any, parts: Sequence[str] = PARTS) -> dict[str, PyTree]:
    """The shapes (jax.ShapeDtypeStruct, unboxed) of the converted tree for `config.model`.

    Of the fusion only the pose projection has released weights (its null tokens and the
    "learned" mode's layers start from their initialisation).
    """
    from upgpt_jax.models.fusion import MultimodalFusion
    from upgpt_jax.models.unet import UNet
    from upgpt_jax.models.vae import AutoencoderKL

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    rng = jax.random.key(0)
    shapes: dict[str, PyTree] = {}
    if "unet" in parts:
        unet = UNet(**model_config.unet)
        size = 2 ** (len(unet.channel_mult) - 1)  # The smallest latent every level can halve.
        sample = jax.ShapeDtypeStruct((1, size, size, unet.in_channels), np.float32)
        context = jax.ShapeDtypeStruct((1, 1, unet.context_dim), np.float32)
        timesteps = jax.ShapeDtypeStruct((1,), np.int32)
        shapes["unet"] = jax.eval_shape(unet.init, rng, sample, timesteps, context)["params"]
    if "vae" in parts:
        vae = AutoencoderKL(**model_config.vae)
        size = 2 ** (len(vae.channel_mult) - 1)
        image = jax.ShapeDtypeStruct((1, size, size, vae.in_channels), np.float32)
        shapes["vae"] = jax.eval_shape(vae.init, rng, image)["params"]
    if "fusion" in parts:
        fusion = MultimodalFusion(**model_config.fusion)
        text = jax.ShapeDtypeStruct((1, 1, fusion.text_dim), np.float32)
        style = jax.ShapeDtypeStruct((1, fusion.num_parts, fusion.style_dim), np.float32)
        pose = jax.ShapeDtypeStruct((1, fusion.pose_dim), np.float32)
        fusion_params = jax.eval_shape(fusion.init, rng, text, style, pose)["params"]
        shapes["fusion"] = {"pose_proj": fusion_params["pose_proj"]}
    return nn.unbox(shapes)


def count_params(tree: PyTree) -> int:
    """Number of scalars in a tree of arrays (or shape structs)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
