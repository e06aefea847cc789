"""SMPL interpolation: exact endpoints, the original's linear blend, and per-joint slerp."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from upgpt_jax.smpl import BETAS, CAMERA, NUM_JOINTS, POSE, interpolate_smpl, load_smpl_vector
from upgpt_jax.smpl.rotations import axis_angle_to_quaternion

SAMPLES = sorted(
    (pathlib.Path(__file__).resolve().parents[2] / "shared/samples/deepfashion/app_cache/pose").glob(
        "pose_*/*.p"
    )
)


@pytest.fixture(scope="module")
def poses():
    vectors = [load_smpl_vector(path) for path in SAMPLES]
    assert len(vectors) == 3
    return vectors


@pytest.mark.parametrize("method", ["linear", "slerp"])
@pytest.mark.parametrize("as_jax", [False, True])
def test_endpoints_are_bit_equal(poses, method, as_jax):
    for start, end in (
        (poses[0], poses[1]),
        (poses[1], poses[2]),
        (poses[2].astype(np.float64), poses[0].astype(np.float64)),
    ):
        if as_jax:
            start, end = jnp.asarray(start), jnp.asarray(end)
        frames = interpolate_smpl(start, end, 7, method)
        assert frames.shape == (7, 85) and frames.dtype == start.dtype
        assert isinstance(frames, jax.Array) == as_jax
        np.testing.assert_array_equal(np.asarray(frames[0]), np.asarray(start))
        np.testing.assert_array_equal(np.asarray(frames[-1]), np.asarray(end))


def test_linear_is_the_original_blend(poses):
    start, end = poses[0].astype(np.float64), poses[2].astype(np.float64)
    frames = interpolate_smpl(start, end, 9, "linear")
    # The original demo: smpl[i] = alpha * src + (1 - alpha) * dst, alpha from 1 down to 0.
    alphas = 1.0 - np.arange(9) / 8.0
    original = np.stack([alpha * start + (1 - alpha) * end for alpha in alphas])
    np.testing.assert_allclose(frames, original, rtol=0, atol=1e-12)


def test_slerp_is_per_joint_geodesic_at_constant_speed(poses):
    start, end = poses[0].astype(np.float64), poses[1].astype(np.float64)
    num_frames = 11
    frames = interpolate_smpl(start, end, num_frames, "slerp")
    fractions = np.linspace(0.0, 1.0, num_frames)
    rotations = frames[:, POSE].reshape(num_frames, NUM_JOINTS, 3)
    for joint in range(NUM_JOINTS):
        ends = Rotation.from_rotvec([start[POSE].reshape(-1, 3)[joint], end[POSE].reshape(-1, 3)[joint]])
        reference = Slerp([0.0, 1.0], ends)(fractions)  # scipy: shortest arc
        ours = Rotation.from_rotvec(rotations[:, joint])
        np.testing.assert_allclose(ours.as_matrix(), reference.as_matrix(), atol=1e-9)
        steps = (ours[1:] * ours[:-1].inv()).magnitude()
        total = (ends[1] * ends[0].inv()).magnitude()
        np.testing.assert_allclose(steps, total / (num_frames - 1), atol=1e-9)  # constant angular speed
        assert total <= np.pi + 1e-12
    quaternions = axis_angle_to_quaternion(rotations)
    np.testing.assert_allclose(np.linalg.norm(quaternions, axis=-1), 1.0, atol=1e-12)
    for part in (BETAS, CAMERA):  # betas and camera blend linearly
        np.testing.assert_allclose(
            frames[:, part],
            (1 - fractions[:, None]) * start[part] + fractions[:, None] * end[part],
            atol=1e-12,
        )


def test_slerp_keeps_flipped_global_orientation_upright(poses):
    # Samples 0 and 1 start from half turns about x written as -3.08 and +3.11 rad: the same
    # rotation up to 0.1 rad. Linear blending swings through a full turn; slerp stays close.
    start, end = poses[0].astype(np.float64), poses[1].astype(np.float64)
    ends = Rotation.from_rotvec([start[:3], end[:3]])
    for method, bound in (("slerp", (ends[1] * ends[0].inv()).magnitude() + 1e-9), ("linear", None)):
        frames = interpolate_smpl(start, end, 9, method)
        distance = (Rotation.from_rotvec(frames[:, :3]) * ends[0].inv()).magnitude()
        if bound is None:
            assert distance.max() > 2.5  # the original's blend turns the person over
        else:
            assert distance.max() <= bound


def test_jit_and_errors(poses):
    run = jax.jit(interpolate_smpl, static_argnums=(2, 3))
    frames = run(jnp.asarray(poses[0]), jnp.asarray(poses[1]), 5, "slerp")
    np.testing.assert_allclose(frames, interpolate_smpl(poses[0], poses[1], 5, "slerp"), atol=2e-5)
    with pytest.raises(ValueError, match="85"):
        interpolate_smpl(poses[0][:72], poses[1], 5)
    with pytest.raises(ValueError, match="method"):
        interpolate_smpl(poses[0], poses[1], 5, "cubic")
    with pytest.raises(ValueError, match="num_frames"):
        interpolate_smpl(poses[0], poses[1], 1)
