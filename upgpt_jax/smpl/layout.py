"""The 85-number SMPL vector that UPGPT conditions on, as named slices.

FrankMocap writes one person as ``pred_body_pose`` (72 axis-angle numbers: 24 joints x 3, the
first joint being the global orientation of the pelvis), ``pred_betas`` (10 shape
coefficients) and ``pred_camera`` (3 weak-perspective numbers s, tx, ty). The original UPGPT
data loaders concatenate them in that order into one 85-vector; every module here reads and
writes that exact layout so vectors from pickles, the synthetic renderer and the model agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from upgpt_jax.smpl.arrays import array_module

SMPL_DIM = 85
NUM_JOINTS = 24
NUM_BETAS = 10

GLOBAL_ORIENT = slice(0, 3)
BODY_POSE = slice(3, 72)
POSE = slice(0, 72)
BETAS = slice(72, 82)
CAMERA = slice(82, 85)

JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hand",
    "right_hand",
)

# Parent of each joint in the standard SMPL kinematic tree (-1 for the root). Every parent
# index is smaller than its child's, so a single forward pass visits parents first.
PARENTS: tuple[int, ...] = (
    -1,
    0,
    0,
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    9,
    9,
    12,
    13,
    14,
    16,
    17,
    18,
    19,
    20,
    21,
)

JOINT_INDEX: dict[str, int] = {name: index for index, name in enumerate(JOINT_NAMES)}


def check_smpl(vec: Any, source: str) -> None:
    """Raise ValueError naming ``source`` unless the last axis of ``vec`` holds 85 numbers."""
    shape = np.shape(vec)
    if len(shape) == 0 or shape[-1] != SMPL_DIM:
        raise ValueError(
            f"{source}: expected an SMPL vector with last dimension {SMPL_DIM} "
            f"(72 pose + 10 betas + 3 camera), got shape {tuple(shape)}"
        )


def split_smpl(vec: Any) -> tuple[Any, Any, Any]:
    """Split ``(..., 85)`` into rotations ``(..., 24, 3)``, betas ``(..., 10)``, camera ``(..., 3)``.

    Works on numpy and jax arrays alike (only slicing and reshape are used).
    """
    check_smpl(vec, "split_smpl")
    rotations = vec[..., POSE].reshape(*vec.shape[:-1], NUM_JOINTS, 3)
    return rotations, vec[..., BETAS], vec[..., CAMERA]


def join_smpl(rotations: Any, betas: Any, camera: Any) -> Any:
    """Inverse of :func:`split_smpl`: ``(..., 24, 3), (..., 10), (..., 3) -> (..., 85)``.

    Returns a jax array if any input is one, else numpy.
    """
    xp = array_module(rotations, betas, camera)
    if rotations.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"join_smpl: rotations must end in (24, 3), got {rotations.shape}")
    if betas.shape[-1] != NUM_BETAS or camera.shape[-1] != 3:
        raise ValueError(
            f"join_smpl: betas must end in 10 and camera in 3, got {betas.shape} and {camera.shape}"
        )
    pose = rotations.reshape(*rotations.shape[:-2], NUM_JOINTS * 3)
    return xp.concatenate([pose, betas, camera], axis=-1)
