"""SMPL utilities: the 85-number layout, rotations, interpolation, kinematics, masks, pickles.

Modules: ``layout`` (named slices of the 85-vector), ``rotations`` (axis-angle / matrix /
quaternion (w, x, y, z), numpy and JAX), ``interpolate`` (linear and slerp), ``kinematics``
(beta-driven rest skeleton, forward kinematics, FrankMocap weak-perspective camera),
``masks`` (person masks from vertices, from SMPL model files via smplx, or a box),
``frankmocap`` (restricted unpickler for FrankMocap pickles). ``python -m upgpt_jax.smpl
to-npz`` converts pickles to .npz.
"""

from upgpt_jax.smpl.frankmocap import (
    crop_box_of,
    load_frankmocap_pickle,
    load_smpl_vector,
    smpl_from_frankmocap,
)
from upgpt_jax.smpl.interpolate import interpolate_smpl
from upgpt_jax.smpl.kinematics import (
    default_crop_box,
    forward_kinematics,
    project_weak_perspective,
    rest_joints,
)
from upgpt_jax.smpl.layout import (
    BETAS,
    BODY_POSE,
    CAMERA,
    GLOBAL_ORIENT,
    JOINT_INDEX,
    JOINT_NAMES,
    NUM_BETAS,
    NUM_JOINTS,
    PARENTS,
    POSE,
    SMPL_DIM,
    check_smpl,
    join_smpl,
    split_smpl,
)
from upgpt_jax.smpl.masks import mask_from_bbox, mask_from_smpl, mask_from_vertices
from upgpt_jax.smpl.rotations import (
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    slerp_quaternion,
)

__all__ = [
    "axis_angle_to_matrix",
    "axis_angle_to_quaternion",
    "BETAS",
    "BODY_POSE",
    "CAMERA",
    "check_smpl",
    "crop_box_of",
    "default_crop_box",
    "forward_kinematics",
    "GLOBAL_ORIENT",
    "interpolate_smpl",
    "join_smpl",
    "JOINT_INDEX",
    "JOINT_NAMES",
    "load_frankmocap_pickle",
    "load_smpl_vector",
    "mask_from_bbox",
    "mask_from_smpl",
    "mask_from_vertices",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "NUM_BETAS",
    "NUM_JOINTS",
    "PARENTS",
    "POSE",
    "project_weak_perspective",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "rest_joints",
    "slerp_quaternion",
    "SMPL_DIM",
    "smpl_from_frankmocap",
    "split_smpl",
]
