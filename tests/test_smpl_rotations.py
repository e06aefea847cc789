"""Rotation conversions against scipy.spatial.transform.Rotation (an independent implementation).

scipy writes quaternions (x, y, z, w); ours are (w, x, y, z) with w >= 0, so scipy's are
reordered and sign-canonicalised before comparing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from upgpt_jax.smpl import rotations as rot


def _random_axes(rng, count):
    axes = rng.standard_normal((count, 3))
    return axes / np.linalg.norm(axes, axis=-1, keepdims=True)


def _axis_angles(kind, count=500, seed=0):
    """Axis-angle vectors with angles that are generic, tiny, or within 1e-3 of pi."""
    rng = np.random.default_rng(seed)
    angles = {
        "random": rng.uniform(0.0, np.pi, count),
        "near_zero": 10.0 ** rng.uniform(-12, -3, count),
        "near_pi": np.pi - 10.0 ** rng.uniform(-9, -3, count),
    }[kind]
    return _random_axes(rng, count) * angles[:, None]


def _scipy_wxyz(rotation):
    quaternion = rotation.as_quat()[..., [3, 0, 1, 2]]
    return np.where(quaternion[..., :1] < 0, -quaternion, quaternion)


@pytest.mark.parametrize("kind", ["random", "near_zero", "near_pi"])
def test_numpy_conversions_match_scipy(kind):
    axis_angle = _axis_angles(kind)
    reference = Rotation.from_rotvec(axis_angle)
    matrix = reference.as_matrix()
    np.testing.assert_allclose(rot.axis_angle_to_matrix(axis_angle), matrix, atol=1e-12)
    np.testing.assert_allclose(rot.axis_angle_to_quaternion(axis_angle), _scipy_wxyz(reference), atol=1e-12)
    np.testing.assert_allclose(rot.matrix_to_quaternion(matrix), _scipy_wxyz(reference), atol=1e-12)
    # Angles are below pi, so the axis-angle is unique and the round trips must return it.
    np.testing.assert_allclose(rot.matrix_to_axis_angle(matrix), reference.as_rotvec(), atol=1e-9)
    np.testing.assert_allclose(rot.quaternion_to_axis_angle(_scipy_wxyz(reference)), axis_angle, atol=1e-9)
    np.testing.assert_allclose(rot.quaternion_to_matrix(_scipy_wxyz(reference)), matrix, atol=1e-12)


def test_angles_beyond_pi_and_half_turns():
    rng = np.random.default_rng(1)
    # Angles in (pi, 2 pi) map to the equivalent rotation with angle in [0, pi].
    long_way = _random_axes(rng, 200) * rng.uniform(np.pi + 1e-3, 2 * np.pi - 1e-3, 200)[:, None]
    np.testing.assert_allclose(
        rot.axis_angle_to_matrix(long_way), Rotation.from_rotvec(long_way).as_matrix(), atol=1e-12
    )
    np.testing.assert_allclose(
        rot.quaternion_to_axis_angle(rot.axis_angle_to_quaternion(long_way)),
        Rotation.from_rotvec(long_way).as_rotvec(),
        atol=1e-9,
    )
    # Exact half turns (trace -1) exercise every branch of Shepperd's method; the sign of
    # the axis is ambiguous there, so compare the rotations, not the vectors.
    half_turns = np.concatenate([np.eye(3), _random_axes(rng, 50)]) * np.pi
    matrices = Rotation.from_rotvec(half_turns).as_matrix()
    recovered = rot.matrix_to_axis_angle(matrices)
    np.testing.assert_allclose(np.linalg.norm(recovered, axis=-1), np.pi, atol=1e-12)
    np.testing.assert_allclose(rot.axis_angle_to_matrix(recovered), matrices, atol=1e-12)


def test_random_matrices_round_trip():
    matrices = Rotation.random(1000, random_state=2).as_matrix()
    np.testing.assert_allclose(
        rot.quaternion_to_matrix(rot.matrix_to_quaternion(matrices)), matrices, atol=1e-12
    )
    np.testing.assert_allclose(
        rot.axis_angle_to_matrix(rot.matrix_to_axis_angle(matrices)), matrices, atol=1e-12
    )


@pytest.mark.parametrize("kind", ["random", "near_zero", "near_pi"])
def test_jax_matches_numpy_under_jit_and_vmap(kind):
    axis_angle = _axis_angles(kind, count=64).astype(np.float32)
    matrix = jax.jit(rot.axis_angle_to_matrix)(jnp.asarray(axis_angle))
    assert isinstance(matrix, jax.Array) and matrix.dtype == jnp.float32
    np.testing.assert_allclose(
        matrix, Rotation.from_rotvec(axis_angle.astype(np.float64)).as_matrix(), atol=2e-6
    )
    per_row = jax.vmap(rot.matrix_to_axis_angle)(matrix)
    np.testing.assert_allclose(per_row, jax.jit(rot.matrix_to_axis_angle)(matrix), atol=1e-6)
    np.testing.assert_allclose(
        jax.jit(rot.quaternion_to_matrix)(jax.jit(rot.matrix_to_quaternion)(matrix)), matrix, atol=2e-6
    )


def test_gradients_finite_and_correct_at_zero():
    # d R / d w_k at the identity is the cross-product matrix of e_k.
    jacobian = jax.jit(jax.jacfwd(rot.axis_angle_to_matrix))(jnp.zeros(3))  # (3, 3, 3): R index, w index
    for k in range(3):
        x, y, z = np.eye(3)[k]
        cross_product_matrix = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])  # K v = e_k x v
        np.testing.assert_allclose(jacobian[..., k], cross_product_matrix, atol=1e-7)

    # Round trips have the identity Jacobian, at zero and near a half turn.
    def round_trip(axis_angle):
        return rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(axis_angle))

    def via_quaternion(axis_angle):
        return rot.quaternion_to_axis_angle(rot.axis_angle_to_quaternion(axis_angle))

    jacobians = jax.jit(jax.vmap(lambda w: (jax.jacrev(round_trip)(w), jax.jacrev(via_quaternion)(w))))
    points = jnp.array([[0.0, 0.0, 0.0], [1e-6, -2e-6, 0.0], [np.pi - 1e-2, 0.0, 0.0]])
    for jacobian in jacobians(points):
        np.testing.assert_allclose(jacobian, np.broadcast_to(np.eye(3), (3, 3, 3)), atol=2e-3)


def test_slerp_matches_scipy_and_takes_the_short_way():
    rng = np.random.default_rng(3)
    start = Rotation.random(20, random_state=4)
    end = Rotation.random(20, random_state=5)
    fractions = rng.uniform(0.0, 1.0, 20)
    ours = rot.slerp_quaternion(_scipy_wxyz(start), -_scipy_wxyz(end), fractions)  # -q: same rotation
    for i in range(20):
        reference = Slerp([0.0, 1.0], Rotation.concatenate([start[i], end[i]]))(fractions[i])
        np.testing.assert_allclose(rot.quaternion_to_matrix(ours[i]), reference.as_matrix(), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-12)
    # Nearly equal rotations use the normalised-lerp branch and stay exact at the ends.
    q = _scipy_wxyz(start[0])
    close = rot.axis_angle_to_quaternion(rot.quaternion_to_axis_angle(q) + 1e-9)
    np.testing.assert_allclose(
        rot.slerp_quaternion(q, close, np.array([0.0, 0.5, 1.0])), [q, q, close], atol=1e-9
    )
