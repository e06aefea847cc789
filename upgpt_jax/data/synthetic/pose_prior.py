"""Plausible standing poses around real ones, turned to face any way, and a camera that frames them.

The prior keeps the 23 body-joint rotations of real DeepFashion people (FrankMocap's
estimates; the global orientation is replaced) and perturbs them: a little noise on every
joint, and wider, anatomically signed moves where people vary most (arms raised or swung,
elbows bent, a walking stride, the head turned). The person is then turned about the
vertical axis (front, three-quarter, side and back views, as in DeepFashion), kept upright,
and a weak-perspective camera (s, tx, ty) is fitted so the whole body lies inside the image
at 78-94% of its height, with the leftover room spent on a random shift.

``DEFAULT_BODY_POSES`` embeds the three sample poses (rounded to 1e-3 rad) so the dataset
builds with no files; :func:`prior_from_frankmocap` reads any FrankMocap pickles instead
(through the restricted loader), and a test checks the embedded copy against the samples.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from upgpt_jax.data.synthetic.mannequin import pose_skeleton
from upgpt_jax.smpl.frankmocap import load_smpl_vector
from upgpt_jax.smpl.kinematics import default_crop_box
from upgpt_jax.smpl.layout import JOINT_INDEX, NUM_JOINTS, join_smpl, split_smpl
from upgpt_jax.smpl.rotations import axis_angle_to_matrix, matrix_to_axis_angle

# Body joints 1..23 of app_cache/pose/pose_{1,2,3} in ../shared/samples/deepfashion.
DEFAULT_BODY_POSES = np.array([
    [[-.087, -.004, -.006], [-.062, .016, .011], [.042, -.009, .027], [.865, .052, -.111], [.757, .038, .076],
     [-.023, -.012, .036], [-.074, .172, -.029], [-.094, -.17, .064], [.03, .005, .036], [-.269, .05, .111],
     [-.188, -.002, -.173], [-.131, .041, .005], [.063, -.118, -.412], [.084, .086, .434], [.065, .045, .035],
     [.174, -.359, -1.007], [.103, .219, .957], [.007, -.353, .016], [-.131, .189, -.053], [.021, -.024, -.095],
     [.038, .001, .108], [-.12, -.088, -.163], [-.128, .084, .159]],
    [[-.188, -.094, -.026], [-.054, .098, -.13], [.093, -.005, .043], [.367, -.108, -.024], [.389, .179, -.001],
     [-.027, .015, .008], [.06, .095, -.138], [.075, -.086, .144], [.015, .02, .002], [-.136, .005, .171],
     [-.162, -.023, -.183], [-.151, -.06, -.049], [.064, -.036, -.347], [.063, .077, .358], [.019, -.066, -.006],
     [.161, -.227, -1.081], [.162, .231, 1.082], [-.059, -.305, .034], [-.066, .243, -.025], [-.014, -.026, .017],
     [-.017, .013, -.019], [-.139, -.073, -.174], [-.149, .078, .167]],
    [[-.258, -.055, -.043], [-.23, -.064, -.069], [.194, .027, .056], [.56, -.054, -.08], [.585, -.042, .056],
     [-.001, .037, .011], [-.002, .126, -.056], [-.045, -.174, .089], [.051, .041, .012], [-.204, .059, .151],
     [-.159, .006, -.181], [.005, .294, -.054], [.006, -.174, -.226], [.042, .182, .209], [.05, .23, -.118],
     [.163, -.321, -1.041], [.043, .365, .935], [.176, -.319, -.037], [-.074, .338, -.072], [.031, -.041, -.05],
     [-.039, .032, .016], [-.148, -.079, -.173], [-.127, .08, .187]],
], np.float64)

# Standard deviation (radians) of the isotropic noise on each body joint.
_JOINT_NOISE = {
    "spine1": 0.05, "spine2": 0.05, "spine3": 0.05, "neck": 0.07, "head": 0.08, "left_collar": 0.04,
    "right_collar": 0.04, "left_hip": 0.05, "right_hip": 0.05, "left_knee": 0.04, "right_knee": 0.04,
    "left_ankle": 0.08, "right_ankle": 0.08, "left_foot": 0.05, "right_foot": 0.05, "left_shoulder": 0.08,
    "right_shoulder": 0.08, "left_elbow": 0.06, "right_elbow": 0.06, "left_wrist": 0.12, "right_wrist": 0.12,
    "left_hand": 0.08, "right_hand": 0.08,
}
# View (yaw about the body's vertical axis): weights and ranges in radians.
_VIEWS = (  # (probability, centre, half-width)
    (0.55, 0.0, 0.35), (0.1, 0.8, 0.3), (0.1, -0.8, 0.3), (0.05, 1.55, 0.25), (0.05, -1.55, 0.25),
    (0.15, np.pi, 0.35),
)
_FILL = (0.78, 0.94)  # fraction of the image height the body box takes
_MARGIN = 0.06  # metres added around the joints for flesh, hair and shoes
_HEAD_TOP = (0.0, 0.23, 0.0)  # crown of the head in the head joint's rest frame


@dataclasses.dataclass(frozen=True)
class PosePrior:
    """Real body-joint rotations (K, 23, 3) to perturb; their global orientations are not used."""

    body_poses: np.ndarray


def default_prior() -> PosePrior:
    """The prior built into the package (the three DeepFashion sample poses)."""
    return PosePrior(DEFAULT_BODY_POSES)


def prior_from_frankmocap(paths: Sequence[str | os.PathLike]) -> PosePrior:
    """A prior from FrankMocap pickles (loaded with the restricted unpickler)."""
    if not paths:
        raise ValueError("prior_from_frankmocap: no pickle paths given")
    poses = [split_smpl(load_smpl_vector(path).astype(np.float64))[0][1:] for path in paths]
    return PosePrior(np.stack(poses))


def sample_rotations(rng: np.random.Generator, prior: PosePrior) -> np.ndarray:
    """(24, 3) axis-angle rotations: a perturbed real body pose, upright, turned to a random view.

    Each perturbation turns a joint further about axes of its parent's frame; they are
    collected as three stages of axis-angle turns and composed in one batched call.
    """
    base = np.zeros((NUM_JOINTS, 3), np.float64)
    base[1:] = prior.body_poses[rng.integers(len(prior.body_poses))]
    # FrankMocap's standing people keep thighs flexed and knees bent (0.4-0.9 rad): straighten
    # them most of the way so the feet stay under the body once a stride is added.
    for side in ("left", "right"):
        base[JOINT_INDEX[f"{side}_knee"]] *= 0.35
        base[JOINT_INDEX[f"{side}_hip"], 0] *= 0.35
    noise, move, stride_turn = np.zeros((3, NUM_JOINTS, 3), np.float64)
    for joint, sigma in _JOINT_NOISE.items():
        noise[JOINT_INDEX[joint]] = rng.normal(0.0, sigma, 3)
    move[JOINT_INDEX["head"]] = (0.0, rng.uniform(-0.5, 0.5), 0.0)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        # Arms: raise sideways (about the forward axis), swing forward/back, bend the elbow forward.
        move[JOINT_INDEX[f"{side}_shoulder"]] = (rng.normal(0.0, 0.3), 0.0, sign * rng.uniform(-0.1, 0.8))
        bend = rng.uniform(0.0, 0.5) if rng.random() < 0.6 else rng.uniform(0.5, 1.7)
        move[JOINT_INDEX[f"{side}_elbow"]] = (0.0, -sign * bend, 0.0)
        move[JOINT_INDEX[f"{side}_hip"]] = (0.0, 0.0, sign * rng.uniform(-0.03, 0.15))
        move[JOINT_INDEX[f"{side}_knee"]] = (rng.uniform(0.0, 0.2), 0.0, 0.0)
    # A stride: one thigh forward (negative x), the other back.
    stride = rng.uniform(-0.3, 0.3)
    stride_turn[JOINT_INDEX["left_hip"], 0] = -stride
    stride_turn[JOINT_INDEX["right_hip"], 0] = stride * rng.uniform(0.3, 1.0)
    turns = axis_angle_to_matrix(np.stack([stride_turn, move, noise, base]))
    rotations = matrix_to_axis_angle(turns[0] @ turns[1] @ turns[2] @ turns[3])

    weights = np.array([view[0] for view in _VIEWS])
    _, centre, half_width = _VIEWS[int(rng.choice(len(_VIEWS), p=weights / weights.sum()))]
    yaw = centre + rng.uniform(-half_width, half_width)
    tilt = rng.normal(0.0, 0.04, 2)
    # FrankMocap's upright person: a half turn about x (y down the image), then the view's yaw.
    upright = axis_angle_to_matrix(np.array([np.pi, 0.0, 0.0]))
    turn = axis_angle_to_matrix(np.array([tilt[0], yaw, tilt[1]]))
    rotations[0] = matrix_to_axis_angle(upright @ turn)
    return rotations


def fit_camera(rng: np.random.Generator, rotations: np.ndarray, betas: np.ndarray,
               image_size: tuple[int, int]) -> np.ndarray:
    """A camera (s, tx, ty) that puts the whole posed body in the image, with random scale and shift."""
    joints, global_rotations = pose_skeleton(rotations, betas)
    head = JOINT_INDEX["head"]
    crown = joints[head] + global_rotations[head] @ np.array(_HEAD_TOP)
    points = np.concatenate([joints, crown[None]])[:, :2]
    low, high = points.min(axis=0) - _MARGIN, points.max(axis=0) + _MARGIN
    height, width = image_size
    side = default_crop_box(image_size)[2]
    # The image spans [-W/side, W/side] x [-H/side, H/side] in the camera's normalised units.
    half_extent = np.array([width, height], np.float64) / side
    size = high - low
    scale = min(rng.uniform(*_FILL) * 2 * half_extent[1] / size[1], 0.96 * 2 * half_extent[0] / size[0])
    slack = half_extent - scale * size / 2
    centre = rng.uniform(-0.7, 0.7, 2) * slack
    shift = centre - scale * (low + high) / 2
    return np.array([scale, shift[0], shift[1]], np.float64)


def sample_pose(rng: np.random.Generator, prior: PosePrior, betas,
                image_size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """An (85,) float32 SMPL vector: sampled rotations, the given ``betas`` and a fitted camera.

    The camera depends on the image's aspect ratio only (the crop box scales with the image).
    """
    betas = np.asarray(betas, np.float64)
    rotations = sample_rotations(rng, prior)
    camera = fit_camera(rng, rotations, betas, image_size)
    return join_smpl(rotations, betas, camera).astype(np.float32)
