"""Forward kinematics against hand-computed joints and scipy, and FrankMocap's camera."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deepfashion_fixture import FRANKMOCAP_PICKLES
from upgpt_jax.smpl import (
    JOINT_INDEX,
    JOINT_NAMES,
    NUM_JOINTS,
    PARENTS,
    crop_box_of,
    default_crop_box,
    forward_kinematics,
    load_frankmocap_pickle,
    project_weak_perspective,
    rest_joints,
    smpl_from_frankmocap,
    split_smpl,
)
from upgpt_jax.smpl.kinematics import MEAN_REST_JOINTS

SAMPLES = FRANKMOCAP_PICKLES
IMAGE_SIZE = (256, 192)  # the samples' images and masks are 192 wide, 256 high
# FrankMocap's pred_joints_img rows 0-24 are OpenPose joints taken from SMPL joints.
OPENPOSE_ROW = {
    "pelvis": 8,
    "right_hip": 9,
    "right_knee": 10,
    "right_ankle": 11,
    "left_hip": 12,
    "left_knee": 13,
    "left_ankle": 14,
    "neck": 1,
    "right_shoulder": 2,
    "right_elbow": 3,
    "right_wrist": 4,
    "left_shoulder": 5,
    "left_elbow": 6,
    "left_wrist": 7,
}


def test_tree_and_rest_skeleton():
    assert len(JOINT_NAMES) == len(PARENTS) == NUM_JOINTS
    assert PARENTS[0] == -1 and all(0 <= PARENTS[j] < j for j in range(1, NUM_JOINTS))
    assert JOINT_NAMES[PARENTS[JOINT_INDEX["left_wrist"]]] == "left_elbow"
    mean = rest_joints(np.zeros(10))
    np.testing.assert_array_equal(mean, MEAN_REST_JOINTS)
    assert mean[JOINT_INDEX["head"], 1] > mean[JOINT_INDEX["pelvis"], 1] > mean[JOINT_INDEX["left_ankle"], 1]
    assert (
        mean[JOINT_INDEX["left_wrist"], 0] > 0 > mean[JOINT_INDEX["right_wrist"], 0]
    )  # SMPL: +x is the left
    taller = rest_joints(np.eye(10)[0])
    wider = rest_joints(np.eye(10)[1])
    np.testing.assert_allclose(taller, mean * 1.06, rtol=1e-6)
    np.testing.assert_allclose(wider[:, 0], mean[:, 0] * 1.04, rtol=1e-6)
    np.testing.assert_array_equal(wider[:, 1:], mean[:, 1:])
    np.testing.assert_array_equal(rest_joints(np.eye(10)[5]), mean)  # other betas: no effect


def test_zero_pose_is_the_rest_pose():
    rest = rest_joints(np.random.default_rng(0).normal(size=10))
    positions, rotations = forward_kinematics(np.zeros((NUM_JOINTS, 3)), rest)
    np.testing.assert_allclose(positions, rest, atol=1e-12)
    np.testing.assert_allclose(rotations, np.broadcast_to(np.eye(3), (NUM_JOINTS, 3, 3)), atol=1e-12)


def test_left_shoulder_quarter_turn_about_z_by_hand():
    rest = MEAN_REST_JOINTS.astype(np.float64)
    pose = np.zeros((NUM_JOINTS, 3))
    pose[JOINT_INDEX["left_shoulder"]] = [0.0, 0.0, np.pi / 2]
    positions, _ = forward_kinematics(pose, rest)

    def quarter_turn_z(v):  # (x, y, z) -> (-y, x, z)
        return np.array([-v[1], v[0], v[2]])

    shoulder, elbow, wrist, hand = (
        JOINT_INDEX[n] for n in ("left_shoulder", "left_elbow", "left_wrist", "left_hand")
    )
    expected_elbow = rest[shoulder] + quarter_turn_z(rest[elbow] - rest[shoulder])
    expected_wrist = expected_elbow + quarter_turn_z(rest[wrist] - rest[elbow])
    expected_hand = expected_wrist + quarter_turn_z(rest[hand] - rest[wrist])
    np.testing.assert_allclose(positions[elbow], expected_elbow, atol=1e-12)
    np.testing.assert_allclose(positions[wrist], expected_wrist, atol=1e-12)
    np.testing.assert_allclose(positions[hand], expected_hand, atol=1e-12)
    # The arm, straight out along +x at rest, now points up (+y); nothing else moved.
    assert positions[wrist, 1] - positions[shoulder, 1] > 0.45
    unmoved = [j for j in range(NUM_JOINTS) if j not in (elbow, wrist, hand)]
    np.testing.assert_array_equal(positions[unmoved], rest[unmoved])


def test_chained_knee_and_global_half_turn_by_hand():
    rest = MEAN_REST_JOINTS.astype(np.float64)
    hip, knee, ankle = JOINT_INDEX["left_hip"], JOINT_INDEX["left_knee"], JOINT_INDEX["left_ankle"]
    pose = np.zeros((NUM_JOINTS, 3))
    pose[hip] = [0.3, 0.0, 0.0]
    pose[knee] = [0.5, 0.0, 0.0]
    positions, _ = forward_kinematics(pose, rest)

    def about_x(angle, v):
        c, s = np.cos(angle), np.sin(angle)
        return np.array([v[0], c * v[1] - s * v[2], s * v[1] + c * v[2]])

    expected_knee = rest[hip] + about_x(0.3, rest[knee] - rest[hip])
    np.testing.assert_allclose(positions[knee], expected_knee, atol=1e-12)
    np.testing.assert_allclose(
        positions[ankle], expected_knee + about_x(0.8, rest[ankle] - rest[knee]), atol=1e-12
    )
    # A half turn about x at the root (what FrankMocap poses start with) flips y and z about the pelvis.
    pose = np.zeros((NUM_JOINTS, 3))
    pose[0] = [np.pi, 0.0, 0.0]
    positions, _ = forward_kinematics(pose, rest)
    np.testing.assert_allclose(positions, rest[0] + (rest - rest[0]) * [1.0, -1.0, -1.0], atol=1e-12)


def test_global_rotations_match_scipy_chain_products():
    rng = np.random.default_rng(1)
    pose = rng.normal(scale=0.6, size=(NUM_JOINTS, 3))
    rest = rest_joints(rng.normal(size=10))
    positions, rotations = forward_kinematics(pose, rest)
    for joint in range(NUM_JOINTS):
        chain, node = [], joint
        while node >= 0:
            chain.append(node)
            node = PARENTS[node]
        reference = Rotation.identity()
        for node in reversed(chain):
            reference = reference * Rotation.from_rotvec(pose[node])
        np.testing.assert_allclose(rotations[joint], reference.as_matrix(), atol=1e-12)
        if joint:  # bones keep their rest length
            parent = PARENTS[joint]
            np.testing.assert_allclose(
                np.linalg.norm(positions[joint] - positions[parent]),
                np.linalg.norm(rest[joint] - rest[parent]),
                rtol=1e-12,
            )


def test_jax_matches_numpy_jit_and_vmap():
    rng = np.random.default_rng(2)
    pose_angles = rng.normal(scale=0.8, size=(5, NUM_JOINTS, 3)).astype(np.float32)
    betas = rng.normal(size=(5, 10)).astype(np.float32)
    reference_positions, reference_rotations = forward_kinematics(
        pose_angles.astype(np.float64), rest_joints(betas.astype(np.float64))
    )

    def pose(p, b):
        return forward_kinematics(p, rest_joints(b))

    def batched_per_example_and_gradient(p, b):  # one compilation for the three transforms
        gradient = jax.grad(lambda q: pose(q, b[0])[0].sum())(jnp.zeros_like(p[0]))
        return pose(p, b), jax.vmap(pose)(p, b), gradient

    (positions, rotations), per_example, gradient = jax.jit(batched_per_example_and_gradient)(
        jnp.asarray(pose_angles), jnp.asarray(betas)
    )
    assert isinstance(positions, jax.Array) and positions.dtype == jnp.float32
    shared_skeleton, _ = forward_kinematics(pose_angles, rest_joints(betas[0]))  # batch broadcasts
    np.testing.assert_allclose(shared_skeleton[0], reference_positions[0], atol=2e-6)
    np.testing.assert_allclose(positions, reference_positions, atol=2e-6)
    np.testing.assert_allclose(rotations, reference_rotations, atol=2e-6)
    np.testing.assert_allclose(per_example[0], positions, atol=1e-6)
    np.testing.assert_allclose(per_example[1], rotations, atol=1e-6)
    assert np.all(np.isfinite(gradient))


@pytest.fixture(scope="module")
def samples():
    assert len(SAMPLES) == 3, f"expected the three sample pickles, found {SAMPLES}"
    return [load_frankmocap_pickle(path) for path in SAMPLES]


def test_camera_reproduces_frankmocap_vertices(samples):
    for record in samples:
        camera = record["pred_camera"].astype(np.float64)
        projected = project_weak_perspective(
            record["pred_vertices_smpl"].astype(np.float64), camera, IMAGE_SIZE, crop_box_of(record)
        )
        np.testing.assert_allclose(projected, record["pred_vertices_img"][:, :2], atol=1e-3)


def test_posed_skeleton_lands_on_frankmocap_joints_upright(samples):
    names = list(OPENPOSE_ROW)
    for record in samples:
        rotations, betas, camera = split_smpl(smpl_from_frankmocap(record).astype(np.float64))
        positions, _ = forward_kinematics(rotations, rest_joints(betas))
        reference = record["pred_joints_img"][list(OPENPOSE_ROW.values()), :2]
        person_height = np.ptp(reference[:, 1])
        for box, tolerance in ((crop_box_of(record), 0.03), (None, 0.05)):
            pixels = project_weak_perspective(positions, camera, IMAGE_SIZE, box)[
                [JOINT_INDEX[n] for n in names]
            ]
            error = np.linalg.norm(pixels - reference, axis=-1)
            assert error.max() < tolerance * person_height, dict(zip(names, error.round(1)))
        # Image-aligned: rows grow downwards from the neck to the pelvis to the ankles.
        rows = dict(zip(names, pixels[:, 1]))
        assert rows["neck"] < rows["pelvis"] < min(rows["left_ankle"], rows["right_ankle"])


def test_default_crop_box_is_centred_and_padded():
    left, top, side = default_crop_box((256, 192))
    assert side == pytest.approx(1.2 * 256)
    assert (left + side / 2, top + side / 2) == pytest.approx((96.0, 128.0))
    # Batched cameras broadcast against batched points.
    points = np.random.default_rng(3).normal(size=(2, 7, 3))
    cameras = np.array([[1.0, 0.1, -0.2], [0.5, 0.0, 0.3]])
    batched = project_weak_perspective(points, cameras[:, None], (256, 192))
    np.testing.assert_allclose(batched[1], project_weak_perspective(points[1], cameras[1], (256, 192)))
    np.testing.assert_allclose(batched[0, :, 0], left + (points[0, :, 0] + 0.1 + 1.0) * side / 2)
