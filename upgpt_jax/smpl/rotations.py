"""Rotation conversions between axis-angle, 3x3 matrices and unit quaternions.

Quaternions are **scalar first, (w, x, y, z)** (scipy's ``Rotation.as_quat`` is (x, y, z, w)
by default; tests convert). Axis-angle vectors are SMPL's: direction = axis, norm = angle in
radians. Every function takes numpy or jax arrays with any leading batch shape and returns
the same kind (see :mod:`upgpt_jax.smpl.arrays`): numpy in, numpy out; jax in, jax out, safe
under ``jit``/``vmap``/``grad``.

Numerical care: the small-angle branches use Taylor series and the "double where" trick, so
values are accurate near angle 0 and gradients there are finite (a plain ``norm`` has an
infinite derivative at 0). Quaternions returned are canonicalised to ``w >= 0`` so the angle
recovered from them lies in [0, pi], which keeps angles near pi (w ~ 0) well conditioned.
"""

from __future__ import annotations

from typing import Any

from upgpt_jax.smpl.arrays import array_module

# Below this squared angle the Taylor series replaces sin/cos ratios (error < 1e-16).
_SMALL_ANGLE_SQUARED = 1e-8


def _safe_norm(xp: Any, vectors: Any) -> tuple[Any, Any, Any]:
    """Return (norm, squared norm, is_small) with a norm whose gradient is finite at 0."""
    squared = xp.sum(vectors * vectors, axis=-1)
    is_small = squared < _SMALL_ANGLE_SQUARED
    norm = xp.sqrt(xp.where(is_small, 1.0, squared))
    return xp.where(is_small, 0.0, norm), squared, is_small


def axis_angle_to_quaternion(axis_angle: Any) -> Any:
    """(..., 3) axis-angle -> (..., 4) unit quaternion (w, x, y, z) with w >= 0."""
    xp = array_module(axis_angle)
    angle, angle_squared, is_small = _safe_norm(xp, axis_angle)
    safe_angle = xp.where(is_small, 1.0, angle)
    # sin(angle / 2) / angle, and its Taylor series 1/2 - angle^2 / 48 for small angles.
    scale = xp.where(is_small, 0.5 - angle_squared / 48.0, xp.sin(0.5 * safe_angle) / safe_angle)
    w = xp.where(is_small, 1.0 - angle_squared / 8.0, xp.cos(0.5 * angle))
    quaternion = xp.concatenate([w[..., None], axis_angle * scale[..., None]], axis=-1)
    # Angles in (pi, 2pi) give w < 0; flip to the equivalent quaternion with w >= 0.
    return xp.where(w[..., None] < 0, -quaternion, quaternion)


def quaternion_to_axis_angle(quaternion: Any) -> Any:
    """(..., 4) quaternion (w, x, y, z), any norm -> (..., 3) axis-angle with angle in [0, pi]."""
    xp = array_module(quaternion)
    quaternion = xp.where(quaternion[..., :1] < 0, -quaternion, quaternion)
    w, xyz = quaternion[..., 0], quaternion[..., 1:]
    sin_half, _, is_small = _safe_norm(xp, xyz)
    angle = 2.0 * xp.arctan2(sin_half, w)
    # angle / sin(angle / 2) scaled by the quaternion norm; for tiny xyz it tends to 2 / w.
    safe_sin_half = xp.where(is_small, 1.0, sin_half)
    ratio = xp.where(is_small, 2.0 / xp.where(is_small, w, 1.0), angle / safe_sin_half)
    return xyz * ratio[..., None]


def quaternion_to_matrix(quaternion: Any) -> Any:
    """(..., 4) quaternion (w, x, y, z), any non-zero norm -> (..., 3, 3) rotation matrix."""
    xp = array_module(quaternion)
    w, x, y, z = (quaternion[..., i] for i in range(4))
    s = 2.0 / xp.sum(quaternion * quaternion, axis=-1)
    rows = [
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quaternion(matrix: Any) -> Any:
    """(..., 3, 3) rotation matrix -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Shepperd's method: of the four algebraically equal formulas (each divides by one of
    4w^2, 4x^2, 4y^2, 4z^2) use the one with the largest divisor, so no branch divides by a
    number near zero; all four are computed and selected with ``where`` (jit-friendly).
    """
    xp = array_module(matrix)
    m = [[matrix[..., i, j] for j in range(3)] for i in range(3)]
    four_squared = xp.stack(
        [
            1 + m[0][0] + m[1][1] + m[2][2],
            1 + m[0][0] - m[1][1] - m[2][2],
            1 - m[0][0] + m[1][1] - m[2][2],
            1 - m[0][0] - m[1][1] + m[2][2],
        ],
        axis=-1,
    )
    # Each row: 4 * component * (w, x, y, z) for the component named by its diagonal entry.
    candidates = xp.stack(
        [
            xp.stack([four_squared[..., 0], m[2][1] - m[1][2], m[0][2] - m[2][0], m[1][0] - m[0][1]], -1),
            xp.stack([m[2][1] - m[1][2], four_squared[..., 1], m[1][0] + m[0][1], m[0][2] + m[2][0]], -1),
            xp.stack([m[0][2] - m[2][0], m[1][0] + m[0][1], four_squared[..., 2], m[1][2] + m[2][1]], -1),
            xp.stack([m[1][0] - m[0][1], m[2][0] + m[0][2], m[2][1] + m[1][2], four_squared[..., 3]], -1),
        ],
        axis=-2,
    )
    best = xp.argmax(four_squared, axis=-1)
    one_hot = (xp.arange(4) == best[..., None]).astype(matrix.dtype)
    chosen = xp.sum(candidates * one_hot[..., None], axis=-2)
    # The chosen divisor is >= 1 (four_squared sums to 4), so sqrt and the division are safe.
    divisor = 2.0 * xp.sqrt(xp.sum(four_squared * one_hot, axis=-1))
    quaternion = chosen / divisor[..., None]
    return xp.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def axis_angle_to_matrix(axis_angle: Any) -> Any:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrix (through the unit quaternion)."""
    return quaternion_to_matrix(axis_angle_to_quaternion(axis_angle))


def matrix_to_axis_angle(matrix: Any) -> Any:
    """(..., 3, 3) rotation matrix -> (..., 3) axis-angle with angle in [0, pi]."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def slerp_quaternion(start: Any, end: Any, fraction: Any) -> Any:
    """Spherical interpolation of unit quaternions (..., 4) along the shorter arc.

    ``fraction`` broadcasts against the batch shape (e.g. shape (N, 1) for N frames of one
    joint set). Nearly equal quaternions fall back to normalised linear interpolation, whose
    error there is below float precision, instead of dividing by sin(~0).
    """
    xp = array_module(start, end, fraction)
    fraction = xp.asarray(fraction)[..., None]
    cosine = xp.sum(start * end, axis=-1, keepdims=True)
    end = xp.where(cosine < 0, -end, end)  # q and -q are one rotation: take the short way
    cosine = xp.clip(xp.abs(cosine), 0.0, 1.0)
    is_close = cosine > 1.0 - 1e-6
    theta = xp.arccos(xp.where(is_close, 0.5, cosine))
    sin_theta = xp.sin(theta)
    start_weight = xp.where(is_close, 1.0 - fraction, xp.sin((1.0 - fraction) * theta) / sin_theta)
    end_weight = xp.where(is_close, fraction, xp.sin(fraction * theta) / sin_theta)
    blended = start_weight * start + end_weight * end
    return blended / xp.sqrt(xp.sum(blended * blended, axis=-1, keepdims=True))
