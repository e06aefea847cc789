"""Interpolate between two SMPL vectors for pose-interpolation videos.

``linear`` blends all 85 numbers, as the original UPGPT demo does (``alpha * src +
(1 - alpha) * dst``). Blending axis-angle vectors linearly can take long detours or pass
through unrelated rotations (e.g. between the near-half-turn global orientations
FrankMocap writes, where +pi and -pi about x are the same rotation), so ``slerp`` instead
moves every joint along the shortest great-circle arc at constant angular speed, while
betas and camera, which live in flat spaces, are still blended linearly.
"""

from __future__ import annotations

from typing import Any, Literal

from upgpt_jax.smpl.arrays import array_module
from upgpt_jax.smpl.layout import check_smpl, join_smpl, split_smpl
from upgpt_jax.smpl.rotations import (
    axis_angle_to_quaternion,
    quaternion_to_axis_angle,
    slerp_quaternion,
)

METHODS = ("linear", "slerp")


def interpolate_smpl(
    start: Any, end: Any, num_frames: int, method: Literal["linear", "slerp"] = "linear"
) -> Any:
    """(85,) and (85,) -> (num_frames, 85), from ``start`` (frame 0) to ``end`` (last frame).

    The first and last frames are bit-equal to the inputs (they are copied, not computed).
    numpy inputs give numpy, jax inputs give jax (``num_frames`` and ``method`` are static).
    """
    check_smpl(start, "interpolate_smpl start")
    check_smpl(end, "interpolate_smpl end")
    if start.ndim != 1 or end.ndim != 1:
        raise ValueError(f"interpolate_smpl: expected two (85,) vectors, got {start.shape} and {end.shape}")
    if method not in METHODS:
        raise ValueError(f"interpolate_smpl: method must be one of {METHODS}, got {method!r}")
    if num_frames < 2:
        raise ValueError(f"interpolate_smpl: num_frames must be at least 2, got {num_frames}")
    xp = array_module(start, end)
    dtype = xp.result_type(start.dtype, end.dtype, xp.float32)  # integer inputs blend as floats
    start, end = start.astype(dtype), end.astype(dtype)
    fraction = xp.linspace(0.0, 1.0, num_frames, dtype=dtype)[:, None]
    blended = (1.0 - fraction) * start + fraction * end
    if method == "slerp":
        start_rotations, _, _ = split_smpl(start)
        end_rotations, _, _ = split_smpl(end)
        quaternions = slerp_quaternion(
            axis_angle_to_quaternion(start_rotations),
            axis_angle_to_quaternion(end_rotations),
            fraction,
        )
        _, betas, camera = split_smpl(blended)
        blended = join_smpl(quaternion_to_axis_angle(quaternions), betas, camera)
    return xp.concatenate([start[None], blended[1:-1], end[None]], axis=0)
