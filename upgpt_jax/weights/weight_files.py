"""Reading weight files: safetensors and PyTorch files, single or sharded, as one flat state dict.

Every importer (LDM checkpoints, diffusers folders, Hugging Face CLIP folders) reads through here,
so all of them accept the same formats and name the file in every error. The module imports
nothing heavy and nothing of this package: torch and safetensors are imported when a file is read,
so model modules may import it without cycles.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
# Hugging Face's sharded checkpoints: NAME.index.json maps every key to the shard holding it.
SHARD_INDEX_SUFFIX = ".index.json"

# Tensors as stored (torch tensors, or numpy arrays where torch is absent); the generic rule
# (torch_params.torch_to_flax_params) converts only what it uses, to the params' dtype.
StateDict = dict[str, Any]


class WeightFileError(ValueError):
    """A weight file or converted-params directory that cannot be read."""


class WeightFileNotFoundError(WeightFileError, FileNotFoundError):
    """A weight file that is not there (also a FileNotFoundError, for callers that expect one)."""


def find_weight_file(folder: str | os.PathLike, candidates: Sequence[str]) -> pathlib.Path:
    """The first of `candidates` (file names, in order of preference) present in `folder`."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise WeightFileNotFoundError(f"weight folder not found: {folder}")
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    found = sorted(path.name for path in folder.iterdir())
    raise WeightFileNotFoundError(
        f"no weight file in {folder}: expected one of {', '.join(candidates)}; found {found}"
    )


def shard_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """The files holding the tensors of weight file `path`: the shards a `*.index.json` names
    (each checked to exist), or `path` itself."""
    path = pathlib.Path(path)
    if not path.name.endswith(SHARD_INDEX_SUFFIX):
        return [path]
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WeightFileError(f"{path}: invalid JSON ({error})") from error
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightFileError(
            f"{path}: not a shard index; expected JSON with a non-empty 'weight_map' "
            "{key: shard file name}"
        )
    shards = [path.parent / name for name in sorted(set(weight_map.values()))]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise WeightFileNotFoundError(f"{path} names shards that are not in {path.parent}: {missing}")
    return shards


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """A flat {key: tensor} from .safetensors, .ckpt/.pt/.pth/.bin, or a `*.index.json` of shards.

    PyTorch files are read with `torch.load(weights_only=True)` (never a plain unpickler); a
    Lightning checkpoint's `state_dict` entry is used when present. The shards of an index are
    merged into one dict.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightFileNotFoundError(f"weight file not found: {path}")
    state_dict: StateDict = {}
    for shard in shard_files(path):
        state_dict.update(_read_one_file(shard))
    return state_dict


def _read_one_file(path: pathlib.Path) -> StateDict:
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    raise WeightFileError(
        f"{path}: unknown weight file type {path.suffix!r}; expected {SAFETENSORS_SUFFIX}, "
        f"one of {TORCH_SUFFIXES}, or a shard index *{SHARD_INDEX_SUFFIX}"
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
