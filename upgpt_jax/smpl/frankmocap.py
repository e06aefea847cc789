"""Load FrankMocap body-mocap pickles safely and turn them into UPGPT's 85-number vector.

The DeepFashion pose files (``smpl_256/<path>.p``) are pickles written by FrankMocap: a
list with one dict per detected person, holding numpy arrays such as ``pred_body_pose``
(1, 72), ``pred_betas`` (1, 10), ``pred_camera`` (3,), ``pred_vertices_img`` (6890, 3),
``faces`` (13776, 3), ``bbox_top_left`` (2,), ``bbox_scale_ratio``. Pickles can run arbitrary
code when loaded, and these come from the internet, so :class:`RestrictedUnpickler` resolves
only the handful of globals numpy needs to rebuild arrays; anything else is refused before
it is called.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the pickle helpers to numpy._core; old pickles name numpy.core.
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _package in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(f"{_package}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED_GLOBALS[(f"{_package}.numeric", "_frombuffer")] = _numeric._frombuffer  # protocol 5
_ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
_ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
# Protocol-2 pickles written by Python 3 spell bytes (array buffers) as _codecs.encode(str,
# "latin1"); it only transforms data (torch's weights_only unpickler admits it too).
_ALLOWED_GLOBALS[("_codecs", "encode")] = codecs.encode
for _container in (list, dict, tuple, set, frozenset):
    _ALLOWED_GLOBALS[("builtins", _container.__name__)] = _container
    _ALLOWED_GLOBALS[("__builtin__", _container.__name__)] = _container  # protocol-2 pickles

_NETWORK_INPUT_SIZE = 224  # FrankMocap body regressor input (HMR-style)
# What smpl_from_frankmocap reads from the first person, and the number of values expected.
_SMPL_KEYS = (("pred_body_pose", 72), ("pred_betas", 10), ("pred_camera", 3))


class RefusedPickleError(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the numpy/containers allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, dtypes, scalars and builtin containers."""

    def __init__(self, file: Any, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickleError(
                f"{self._source}: refused to load global '{module}.{name}'; FrankMocap pickles may "
                "only contain numpy arrays and plain containers (this file may be malicious)"
            ) from None


def load_restricted_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; errors name the file."""
    source = os.fspath(path)
    with open(source, "rb") as handle:
        data = handle.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except RefusedPickleError:
        raise
    except Exception as error:  # truncated or corrupt pickles raise many different types
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({error!r})") from error


def load_frankmocap_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a FrankMocap pickle and return the first person's record (a dict of arrays).

    FrankMocap writes a list of per-person dicts; UPGPT uses only the first person, as the
    original loaders do (``smpl_params[0]``). A bare dict is accepted too.
    """
    source = os.fspath(path)
    content = load_restricted_pickle(source)
    if isinstance(content, (list, tuple)):
        if not content:
            raise ValueError(f"{source}: the pickle holds an empty list (no person detected)")
        content = content[0]
    if not isinstance(content, dict):
        raise ValueError(f"{source}: expected a list of per-person dicts, got {type(content).__name__}")
    return content


def smpl_from_frankmocap(record: dict[str, Any], source: str = "<record>") -> np.ndarray:
    """Concatenate pred_body_pose (72), pred_betas (10), pred_camera (3) into a (85,) float32.

    This is the order the original UPGPT loaders concatenate them in; pred_body_pose holds
    the global orientation first (joint 0), then the 23 body joints.
    """
    parts = []
    for key, size in _SMPL_KEYS:
        if key not in record:
            raise KeyError(f"{source}: missing key '{key}' (found {sorted(record)})")
        value = np.asarray(record[key])
        if value.size != size or not np.issubdtype(value.dtype, np.number):
            raise ValueError(
                f"{source}: '{key}' must hold {size} numbers, got shape {value.shape} dtype {value.dtype}"
            )
        parts.append(value.reshape(size).astype(np.float32))
    return np.concatenate(parts)


def load_smpl_vector(path: str | os.PathLike) -> np.ndarray:
    """The (85,) float32 SMPL vector of the first person in a FrankMocap pickle."""
    return smpl_from_frankmocap(load_frankmocap_pickle(path), source=os.fspath(path))


def crop_box_of(record: dict[str, Any], source: str = "<record>") -> tuple[float, float, float]:
    """(left, top, side) in pixels of the square crop FrankMocap's camera refers to.

    FrankMocap resized that crop to 224 x 224 by ``bbox_scale_ratio``; see
    :func:`upgpt_jax.smpl.kinematics.project_weak_perspective`.
    """
    for key in ("bbox_top_left", "bbox_scale_ratio"):
        if key not in record:
            raise KeyError(f"{source}: missing key '{key}' (found {sorted(record)})")
    left, top = np.asarray(record["bbox_top_left"], dtype=np.float64).reshape(2)
    return float(left), float(top), _NETWORK_INPUT_SIZE / float(record["bbox_scale_ratio"])
