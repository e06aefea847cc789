"""A beta-driven rest skeleton, forward kinematics along the SMPL tree, and the camera.

There is no licensed SMPL model in this project, so the rest skeleton is an approximation:
``MEAN_REST_JOINTS`` are rounded, left-right symmetric joint positions resembling the SMPL
neutral model's T-pose (metres, SMPL's own frame: y up, x towards the body's left, z
forward, pelvis 0.23 m below the origin, about 1.7 m tall). Limb lengths were adjusted to
the joints FrankMocap regressed for the three sample pickles (``pred_joints_img``
unprojected, then turned back into the rest frame with the sample rotations) and agree with
them to 1-2 cm; posed and projected, the skeleton lands within 3% of the person's height of
FrankMocap's joints (tests/test_smpl_kinematics.py). SMPL's betas are principal components
of its mesh and have no exact skeletal meaning; here ``betas[0]`` scales height (every joint's
position, about 6% per unit) and ``betas[1]`` scales width (lateral offsets, about 4% per
unit), which is roughly what the first two SMPL components do. The other betas are ignored.

Forward kinematics follows SMPL: joint 0 rotates about its own rest position (which stays
fixed, as in SMPL with no translation), each child hangs off its parent by its rest offset
turned by the parent's accumulated rotation.

Camera: FrankMocap's weak-perspective body camera (s, tx, ty) maps a point to the square
crop it ran the network on as ``u = s * x + tx``, ``v = s * y + ty`` (scale first, then
shift; u, v in [-1, 1] across the crop), then to the image as ``pixel = corner +
(u + 1) / 2 * side``. Checked against the sample pickles: their ``pred_vertices_img`` equal
this map of ``pred_vertices_smpl`` with ``corner = bbox_top_left``, ``side = 224 /
bbox_scale_ratio`` to 5e-5 px (the HMR/SPIN order ``s * (x + tx)`` misses by up to 118 px).
SMPL poses from FrankMocap carry a global orientation near a half turn about x, so posed y
already points down the image: projecting them gives an upright person in pixel coordinates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from upgpt_jax.smpl.arrays import array_module
from upgpt_jax.smpl.layout import NUM_BETAS, NUM_JOINTS, PARENTS
from upgpt_jax.smpl.rotations import axis_angle_to_matrix

MEAN_REST_JOINTS = np.array(
    [
        [0.000, -0.230, 0.025],  # pelvis
        [0.065, -0.322, 0.017],  # left_hip
        [-0.065, -0.322, 0.017],  # right_hip
        [0.000, -0.113, 0.000],  # spine1
        [0.101, -0.694, 0.013],  # left_knee
        [-0.101, -0.694, 0.013],  # right_knee
        [0.000, 0.025, 0.010],  # spine2
        [0.086, -1.084, -0.028],  # left_ankle
        [-0.086, -1.084, -0.028],  # right_ankle
        [0.000, 0.080, 0.022],  # spine3
        [0.116, -1.145, 0.097],  # left_foot
        [-0.116, -1.145, 0.097],  # right_foot
        [0.000, 0.305, -0.010],  # neck
        [0.078, 0.215, -0.005],  # left_collar
        [-0.078, 0.215, -0.005],  # right_collar
        [0.000, 0.370, 0.056],  # head
        [0.180, 0.235, -0.013],  # left_shoulder
        [-0.180, 0.235, -0.013],  # right_shoulder
        [0.432, 0.224, -0.036],  # left_elbow
        [-0.432, 0.224, -0.036],  # right_elbow
        [0.677, 0.231, -0.040],  # left_wrist
        [-0.677, 0.231, -0.040],  # right_wrist
        [0.762, 0.222, -0.057],  # left_hand
        [-0.762, 0.222, -0.057],  # right_hand
    ],
    dtype=np.float32,
)
HEIGHT_PER_BETA = 0.06
WIDTH_PER_BETA = 0.04

# FrankMocap pads the detected person box by 1.2 and runs on that square crop. DeepFashion
# people fill the frame, so with no box given the crop is taken as 1.2 x the larger image
# side, centred on the image (the samples: side 1.14-1.19 x height, centre within 3 px).
DEFAULT_CROP_PADDING = 1.2


def rest_joints(betas: Any) -> Any:
    """(..., 10) betas -> (..., 24, 3) rest (T-pose) joint positions in metres, y up."""
    xp = array_module(betas)
    if betas.shape[-1] != NUM_BETAS:
        raise ValueError(f"rest_joints: betas must end in {NUM_BETAS}, got shape {betas.shape}")
    mean = xp.asarray(MEAN_REST_JOINTS, dtype=betas.dtype)
    height = 1.0 + HEIGHT_PER_BETA * betas[..., 0]
    width = height * (1.0 + WIDTH_PER_BETA * betas[..., 1])
    scale = xp.stack([width, height, height], axis=-1)  # x is the body's lateral axis
    return mean * scale[..., None, :]


def _tree_levels() -> tuple[tuple[int, ...], ...]:
    """Non-root joints grouped by depth in the tree; each group only needs earlier groups."""
    depth = [0] * NUM_JOINTS
    for joint in range(1, NUM_JOINTS):
        depth[joint] = depth[PARENTS[joint]] + 1
    return tuple(
        tuple(j for j in range(1, NUM_JOINTS) if depth[j] == level) for level in range(1, max(depth) + 1)
    )


_TREE_LEVELS = _tree_levels()


def forward_kinematics(rotations: Any, rest: Any) -> tuple[Any, Any]:
    """Pose a skeleton: axis-angle ``(..., 24, 3)`` and rest joints ``(..., 24, 3)``.

    Returns joint positions ``(..., 24, 3)`` and global rotation matrices ``(..., 24, 3, 3)``.
    Batch shapes broadcast. Works on numpy and jax arrays (jit/vmap/grad-safe). Joints of
    equal depth are posed together (8 steps, not 23) with elementwise products, which keeps
    the XLA graph small: compiling it takes a fraction of the time a per-joint loop does.
    """
    xp = array_module(rotations, rest)
    if rotations.shape[-2:] != (NUM_JOINTS, 3) or rest.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(
            "forward_kinematics: rotations and rest must end in (24, 3), got "
            f"{rotations.shape} and {rest.shape}"
        )
    batch = np.broadcast_shapes(rotations.shape[:-2], rest.shape[:-2])
    rest = xp.broadcast_to(rest, (*batch, NUM_JOINTS, 3))
    local = axis_angle_to_matrix(xp.broadcast_to(rotations, (*batch, NUM_JOINTS, 3)))
    global_rotations = [local[..., 0, :, :]] + [None] * (NUM_JOINTS - 1)
    positions = [rest[..., 0, :]] + [None] * (NUM_JOINTS - 1)
    for joints in _TREE_LEVELS:
        parents = [PARENTS[j] for j in joints]
        parent_rotations = xp.stack([global_rotations[p] for p in parents], axis=-3)  # (..., k, 3, 3)
        parent_positions = xp.stack([positions[p] for p in parents], axis=-2)  # (..., k, 3)
        offsets = rest[..., list(joints), :] - rest[..., parents, :]
        level_positions = parent_positions + xp.sum(parent_rotations * offsets[..., None, :], axis=-1)
        level_rotations = xp.sum(
            parent_rotations[..., :, :, None] * local[..., list(joints), None, :, :], axis=-2
        )
        for index, joint in enumerate(joints):
            positions[joint] = level_positions[..., index, :]
            global_rotations[joint] = level_rotations[..., index, :, :]
    return xp.stack(positions, axis=-2), xp.stack(global_rotations, axis=-3)


def default_crop_box(image_size: tuple[int, int]) -> tuple[float, float, float]:
    """The (left, top, side) crop FrankMocap would use for a person filling an (H, W) image."""
    height, width = image_size
    side = DEFAULT_CROP_PADDING * max(height, width)
    return (width - side) / 2.0, (height - side) / 2.0, side


def project_weak_perspective(
    points: Any,
    camera: Any,
    image_size: tuple[int, int],
    crop_box: tuple[float, float, float] | None = None,
) -> Any:
    """Project ``(..., 3)`` points with a FrankMocap camera (s, tx, ty) to pixel coordinates.

    ``camera`` broadcasts against ``points``: a (3,) camera for any set of points, or
    (B, 1, 3) for (B, N, 3) points. Returns ``(..., 2)`` continuous (x, y) pixel coordinates
    of an (H, W) image: x to the right, y down, pixel (row r, column c) covering
    [c, c + 1) x [r, r + 1). ``crop_box`` is (left, top, side) of the square crop the camera
    refers to, in pixels; FrankMocap pickles give it (see
    :func:`upgpt_jax.smpl.frankmocap.crop_box_of`); by default :func:`default_crop_box`.
    """
    xp = array_module(points, camera)
    left, top, side = default_crop_box(image_size) if crop_box is None else crop_box
    normalised = camera[..., :1] * points[..., :2] + camera[..., 1:3]
    corner = xp.asarray([left, top], dtype=normalised.dtype)
    return corner + (normalised + 1.0) * (0.5 * side)
