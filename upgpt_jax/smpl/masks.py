"""Person masks: rasterised SMPL meshes, meshes posed by smplx, and bounding boxes.

UPGPT conditions on a person mask. DeepFashion ships parser masks (``<path>_mask.png``);
where none exists one can be drawn from the body mesh FrankMocap already projected into
the image (``pred_vertices_img`` and ``faces`` in its pickles, no SMPL model needed), or
from an 85-vector through ``smplx`` when the user has the licensed SMPL model files, or,
coarsest, the filled bounding box (the original's ``input_mask_type='bbox'``).

Pixel convention (shared with :func:`upgpt_jax.smpl.kinematics.project_weak_perspective`):
continuous (x, y) pixel coordinates, pixel (row r, column c) covers [c, c + 1) x [r, r + 1),
and a pixel belongs to a triangle when its centre (c + 0.5, r + 0.5) does.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from upgpt_jax.smpl.kinematics import project_weak_perspective
from upgpt_jax.smpl.layout import BETAS, BODY_POSE, CAMERA, GLOBAL_ORIENT, check_smpl

# Candidate (triangle, pixel) pairs tested per chunk (~150 bytes each): bounds the working
# memory to ~80 MB whatever the image and mesh size.
_PAIRS_PER_CHUNK = 1 << 19


def mask_from_vertices(
    vertices_img: np.ndarray, faces: np.ndarray, image_size: tuple[int, int]
) -> np.ndarray:
    """Rasterise triangles ``faces`` (F, 3) over pixel-space ``vertices_img`` (V, 2 or 3).

    Returns a bool (H, W) mask, True where a pixel centre lies inside (or on the edge of)
    any triangle; depth (a third column) is ignored. Vectorised: every triangle enumerates
    the pixel centres of its bounding box and keeps those on the inner side of its three
    edges, whichever way it winds.
    """
    height, width = image_size
    points = np.asarray(vertices_img, dtype=np.float64)[:, :2]
    faces = np.asarray(faces).astype(np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.all((faces >= 0) & (faces < len(points))):
        raise ValueError(
            f"mask_from_vertices: faces must be (F, 3) indices below {len(points)}, got shape "
            f"{faces.shape} with values in [{faces.min(initial=0)}, {faces.max(initial=0)}]"
        )
    if not np.all(np.isfinite(points)):
        raise ValueError("mask_from_vertices: vertices_img holds NaN or infinite coordinates")
    corners = points[faces]  # (F, 3, 2)
    # Pixel columns/rows whose centres fall inside each triangle's box, clipped to the image.
    low = np.ceil(corners.min(axis=1) - 0.5).astype(np.int64)
    high = np.floor(corners.max(axis=1) - 0.5).astype(np.int64)
    low = np.maximum(low, 0)
    high = np.minimum(high, [width - 1, height - 1])
    box_width = np.maximum(high[:, 0] - low[:, 0] + 1, 0)
    box_height = np.maximum(high[:, 1] - low[:, 1] + 1, 0)
    counts = box_width * box_height
    mask = np.zeros((height, width), dtype=bool)
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):
        done = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, done + _PAIRS_PER_CHUNK, side="right")), start + 1)
        chunk = slice(start, stop)
        _fill_triangles(mask, corners[chunk], low[chunk], box_width[chunk], counts[chunk])
        start = stop
    return mask


def _fill_triangles(
    mask: np.ndarray, corners: np.ndarray, low: np.ndarray, box_width: np.ndarray, counts: np.ndarray
) -> None:
    """Set the pixels of ``mask`` whose centres lie in the given triangles (in place)."""
    triangle = np.repeat(np.arange(len(counts)), counts)
    if triangle.size == 0:
        return
    within = np.arange(triangle.size) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = low[triangle, 0] + within % box_width[triangle]
    rows = low[triangle, 1] + within // box_width[triangle]
    centre = np.stack([columns + 0.5, rows + 0.5], axis=-1)
    a, b, c = (corners[triangle, k] for k in range(3))
    edges = np.stack([_cross(b - a, centre - a), _cross(c - b, centre - b), _cross(a - c, centre - c)])
    inside = np.all(edges >= 0, axis=0) | np.all(edges <= 0, axis=0)
    inside &= _cross(b - a, c - a) != 0  # degenerate triangles cover nothing
    mask[rows[inside], columns[inside]] = True


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z component of the cross product of 2D vectors (twice the signed triangle area)."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def mask_from_bbox(mask_or_box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The filled bounding box, as a bool (H, W) mask; the original's ``get_bbox`` fallback.

    ``mask_or_box`` is either an (H, W) mask (any dtype, non-zero = person; its inclusive row
    and column extent is filled, as the original does; an empty mask gives an empty box) or
    a box (x_min, y_min, x_max, y_max) in continuous pixel coordinates (pixels whose centres
    lie inside are filled).
    """
    height, width = image_size
    array = np.asarray(mask_or_box)
    result = np.zeros((height, width), dtype=bool)
    if array.shape == (height, width):
        rows = np.flatnonzero(array.any(axis=1))
        columns = np.flatnonzero(array.any(axis=0))
        if rows.size:
            result[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1] = True
        return result
    if array.shape != (4,):
        raise ValueError(
            f"mask_from_bbox: expected an {(height, width)} mask or a box (x_min, y_min, x_max, y_max), "
            f"got shape {array.shape}"
        )
    x_min, y_min, x_max, y_max = array.astype(np.float64)
    first_column, first_row = max(int(np.ceil(x_min - 0.5)), 0), max(int(np.ceil(y_min - 0.5)), 0)
    last_column, last_row = int(np.floor(x_max - 0.5)), int(np.floor(y_max - 0.5))
    result[first_row : max(last_row + 1, 0), first_column : max(last_column + 1, 0)] = True
    return result


@functools.lru_cache(maxsize=4)
def _load_smpl_model(model_dir: str, gender: str) -> Any:
    try:
        import smplx
    except ImportError as error:
        raise ImportError(
            'mask_from_smpl needs the optional smplx package: pip install -e ".[smpl]"'
        ) from error
    path = os.path.join(model_dir, "smpl", f"SMPL_{gender.upper()}.pkl")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"mask_from_smpl: no SMPL model at {path} (download the SMPL model files and place "
            "them as <model_dir>/smpl/SMPL_NEUTRAL.pkl etc.)"
        )
    return smplx.create(model_dir, model_type="smpl", gender=gender)


def mask_from_smpl(
    smpl: np.ndarray,
    model_dir: str | os.PathLike,
    image_size: tuple[int, int],
    crop_box: tuple[float, float, float] | None = None,
    gender: str = "neutral",
) -> np.ndarray:
    """Pose the SMPL mesh of an (85,) vector with smplx, project it and rasterise it.

    ``model_dir`` holds ``smpl/SMPL_<GENDER>.pkl`` (smplx's layout). smplx unpickles that file
    itself, so give it only SMPL model files from a trusted source. ``crop_box`` as in
    :func:`upgpt_jax.smpl.kinematics.project_weak_perspective`.
    """
    check_smpl(smpl, "mask_from_smpl")
    model = _load_smpl_model(os.fspath(model_dir), gender)
    import torch

    vector = torch.as_tensor(np.asarray(smpl, dtype=np.float32).reshape(1, -1))
    with torch.no_grad():
        output = model(
            global_orient=vector[:, GLOBAL_ORIENT],
            body_pose=vector[:, BODY_POSE],
            betas=vector[:, BETAS],
        )
    vertices = output.vertices[0].numpy().astype(np.float64)
    camera = np.asarray(smpl, dtype=np.float64)[CAMERA]
    projected = project_weak_perspective(vertices, camera, image_size, crop_box)
    return mask_from_vertices(projected, model.faces, image_size)
