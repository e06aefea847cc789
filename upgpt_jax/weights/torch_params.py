"""Generic PyTorch state dict <-> Flax parameter conversion.

The rule (the one diffusers' own Flax models use): split a torch key on '.', join a numeric segment
to the name before it (`down_blocks.0.resnets.1` -> `down_blocks_0/resnets_1`), and rename the
leaf: `weight` of a Linear -> `kernel` transposed to (in, out); of a Conv (O, I, *spatial) ->
`kernel` (*spatial, I, O); of a norm -> `scale`; of an Embedding -> `embedding`; `bias` stays.
Which `weight` it is comes from the expected Flax tree, so the rule needs no model knowledge.
Everything is checked against that tree, and all problems are reported together in one
`WeightConversionError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import flax
import numpy as np
from flax.core import meta
from flax.traverse_util import flatten_dict, unflatten_dict

FlaxPath = tuple[str, ...]
PyTree = Any

_WEIGHT_NAMES = ("kernel", "scale", "embedding")
# diffusers attributes whose own name ends in _<digit> (TimestepEmbedding.linear_1/linear_2); the
# reverse rule must not turn them into list indices.
DIFFUSERS_LITERAL_NAMES = ("linear_1", "linear_2")


class WeightConversionError(ValueError):
    """Weights that do not fit a model; lists every missing, unexpected and misshaped key."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        misshaped: list[str],
    ) -> None:
        self.source, self.missing, self.unexpected, self.misshaped = (
            source, missing, unexpected, misshaped,
        )
        sections = [
            f"weights from {source} do not match the model: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(misshaped)} misshaped"
        ]
        for title, lines in (
            ("missing (flax path, expected shape)", missing),
            ("unexpected (key in the weights, shape)", unexpected),
            ("misshaped (key in the weights -> flax path: got shape in flax layout, expected)",
             misshaped),
        ):
            if lines:
                sections.append(f"{title}:\n  " + "\n  ".join(lines))
        super().__init__("\n".join(sections))


def torch_key_to_flax_path(key: str) -> FlaxPath:
    """`a.0.b.weight` -> ('a_0', 'b', 'weight'); the leaf is renamed later, against the model."""
    path: list[str] = []
    for segment in key.split("."):
        if segment.isdigit() and path:
            path[-1] = f"{path[-1]}_{segment}"
        else:
            path.append(segment)
    return tuple(path)


def _flax_layout_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """The shape a torch tensor takes once moved to the Flax layout of `leaf`."""
    if leaf != "kernel" or len(shape) < 2:
        return tuple(shape)
    if len(shape) == 2:
        return (shape[1], shape[0])
    return (*shape[2:], shape[1], shape[0])


def _to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf != "kernel" or array.ndim < 2:
        return array
    if array.ndim == 2:
        return array.T
    return np.transpose(array, (*range(2, array.ndim), 1, 0))


def _to_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf != "kernel" or array.ndim < 2:
        return array
    if array.ndim == 2:
        return array.T
    spatial = array.ndim - 2
    return np.transpose(array, (array.ndim - 1, array.ndim - 2, *range(spatial)))


def _flat_expected(expected: PyTree) -> dict[FlaxPath, Any]:
    tree = flax.core.unfreeze(meta.unbox(expected))
    return flatten_dict(tree)


def _split_params_collection(expected: PyTree) -> tuple[PyTree, bool]:
    """Accept either a params tree or a variables dict {'params': tree}."""
    tree = flax.core.unfreeze(meta.unbox(expected))
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        return tree["params"], True
    return tree, False


def match_torch_keys(
    shapes: Mapping[str, tuple[int, ...]],
    expected: PyTree,
    *,
    source: str,
    key_to_path: Callable[[str], FlaxPath] = torch_key_to_flax_path,
) -> dict[str, FlaxPath]:
    """Map each torch key to its Flax path, checking names and shapes against `expected`.

    `shapes` holds torch-layout shapes only, so a checkpoint can be validated from its header
    (e.g. safetensors metadata) before any tensor is read. `expected` is a params tree (or
    {'params': tree}) of arrays or ShapeDtypeStructs, boxed or not, e.g. from
    `jax.eval_shape(model.init, ...)`. `key_to_path` splits a key into a Flax path whose leaf is
    still torch's (default: the generic `name_N` rule; Hugging Face's Flax models keep list
    indices as keys of their own). Raises `WeightConversionError` listing every problem.
    """
    flat_expected = _flat_expected(_split_params_collection(expected)[0])
    placed: dict[str, tuple[FlaxPath, tuple[int, ...]]] = {}
    claimed: dict[FlaxPath, str] = {}
    unexpected = []
    for key, torch_shape in shapes.items():
        torch_shape = tuple(int(d) for d in torch_shape)
        path = key_to_path(key)
        if path[-1] == "weight":
            candidates = [path[:-1] + (name,) for name in _WEIGHT_NAMES]
        else:
            candidates = [path]
        target = next((c for c in candidates if c in flat_expected), None)
        if target is None or target in claimed:
            reason = f" (same flax path as {claimed[target]})" if target in claimed else ""
            unexpected.append(f"{key} {torch_shape}{reason}")
            continue
        claimed[target] = key
        placed[key] = (target, _flax_layout_shape(torch_shape, target[-1]))
    return _checked(placed, unexpected, flat_expected, source)


def check_flax_params(
    flat_params: Mapping[FlaxPath, Any], expected: PyTree, *, source: str
) -> None:
    """Check a flat params dict already in Flax names and layout (e.g. read from a Flax msgpack
    file) against `expected`, as `match_torch_keys` does; raises `WeightConversionError`."""
    flat_expected = _flat_expected(_split_params_collection(expected)[0])
    placed, unexpected = {}, []
    for path, value in flat_params.items():
        shape = tuple(np.shape(value))
        if path in flat_expected:
            placed["/".join(path)] = (path, shape)
        else:
            unexpected.append(f"{'/'.join(path)} {shape}")
    _checked(placed, unexpected, flat_expected, source)


def _checked(
    placed: Mapping[str, tuple[FlaxPath, tuple[int, ...]]],
    unexpected: list[str],
    flat_expected: Mapping[FlaxPath, Any],
    source: str,
) -> dict[str, FlaxPath]:
    """{key: flax path} of `placed` ({key: (its flax path, its shape in flax layout)}) when those
    shapes are right, nothing expected is left unplaced and nothing is `unexpected`; otherwise one
    `WeightConversionError` naming every problem."""
    misshaped = []
    for key, (path, got) in placed.items():
        want = tuple(flat_expected[path].shape)
        if got != want:
            name = "/".join(path)
            label = key if key == name else f"{key} -> {name}"
            misshaped.append(f"{label}: got {got}, expected {want}")
    placed_paths = {path for path, _ in placed.values()}
    missing = [
        f"{'/'.join(path)} {tuple(leaf.shape)}"
        for path, leaf in flat_expected.items()
        if path not in placed_paths
    ]
    if missing or unexpected or misshaped:
        raise WeightConversionError(source, missing, unexpected, misshaped)
    return {key: path for key, (path, _) in placed.items()}


def _to_numpy(value: Any) -> np.ndarray:
    """numpy view of a torch tensor (bfloat16 widened, which numpy lacks) or any array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if not value.dtype.is_floating_point or value.dtype.itemsize >= 4:
            return value.numpy()
        return value.float().numpy()
    return np.asarray(value)


def torch_to_flax_params(
    state_dict: Mapping[str, Any],
    expected: PyTree,
    *,
    source: str,
    key_to_path: Callable[[str], FlaxPath] = torch_key_to_flax_path,
) -> dict[str, Any]:
    """Convert a PyTorch state dict (torch tensors or numpy arrays) to a Flax params tree.

    The result mirrors `expected` (a params tree, or {'params': tree} which is then returned in
    the same wrapping), holds numpy arrays cast to the expected dtypes, and carries no logical
    partitioning boxes (apply works on plain trees; put them on devices with `jax.device_put`).
    `source` names the checkpoint in errors; `key_to_path` as in `match_torch_keys`.
    """
    params_tree, wrapped = _split_params_collection(expected)
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    matched = match_torch_keys(shapes, params_tree, source=source, key_to_path=key_to_path)
    flat_expected = _flat_expected(params_tree)
    flat = {}
    for key, path in matched.items():
        array = _to_flax_layout(_to_numpy(state_dict[key]), path[-1])
        flat[path] = np.ascontiguousarray(array).astype(flat_expected[path].dtype, copy=False)
    params = unflatten_dict(flat)
    return {"params": params} if wrapped else params


def flax_to_torch_state_dict(
    params: PyTree, *, literal_names: Collection[str] = DIFFUSERS_LITERAL_NAMES
) -> dict[str, np.ndarray]:
    """Inverse of `torch_to_flax_params`: Flax params -> {torch key: numpy array in torch layout}.

    A `name_N` segment becomes `name.N` unless it is in `literal_names` (torch attributes that
    really end in `_N`, such as diffusers' `linear_1`). Accepts boxed trees and {'params': tree}.
    Load the result with `torch_module.load_state_dict({k: torch.from_numpy(v) ...})`.
    """
    tree, _ = _split_params_collection(params)
    state_dict = {}
    for path, value in _flat_expected(tree).items():
        segments = []
        for segment in path[:-1]:
            indexed = re.fullmatch(r"(.+)_(\d+)", segment)
            if indexed and segment not in literal_names:
                segment = f"{indexed[1]}.{indexed[2]}"
            segments.append(segment)
        leaf = path[-1]
        torch_leaf = "weight" if leaf in _WEIGHT_NAMES else leaf
        array = np.asarray(value)
        state_dict[".".join(segments + [torch_leaf])] = np.ascontiguousarray(
            _to_torch_layout(array, leaf)
        )
    return state_dict
