"""The 85-number layout: named slices, split/join, and the length check."""

import jax.numpy as jnp
import numpy as np
import pytest

from upgpt_jax.smpl import (
    BETAS,
    BODY_POSE,
    CAMERA,
    GLOBAL_ORIENT,
    POSE,
    SMPL_DIM,
    check_smpl,
    join_smpl,
    split_smpl,
)


def test_slices_tile_the_vector():
    covered = np.concatenate(
        [np.arange(SMPL_DIM)[part] for part in (GLOBAL_ORIENT, BODY_POSE, BETAS, CAMERA)]
    )
    np.testing.assert_array_equal(covered, np.arange(85))
    np.testing.assert_array_equal(np.arange(85)[POSE], np.arange(72))


@pytest.mark.parametrize("as_jax", [False, True])
def test_split_join_round_trip(as_jax):
    vectors = np.random.default_rng(0).normal(size=(2, 3, 85)).astype(np.float32)
    if as_jax:
        vectors = jnp.asarray(vectors)
    rotations, betas, camera = split_smpl(vectors)
    assert rotations.shape == (2, 3, 24, 3) and betas.shape == (2, 3, 10) and camera.shape == (2, 3, 3)
    np.testing.assert_array_equal(np.asarray(rotations[..., 0, :]), np.asarray(vectors[..., GLOBAL_ORIENT]))
    np.testing.assert_array_equal(np.asarray(rotations[..., 5, :]), np.asarray(vectors[..., 15:18]))
    np.testing.assert_array_equal(np.asarray(camera), np.asarray(vectors[..., 82:]))
    joined = join_smpl(rotations, betas, camera)
    assert type(joined) is type(vectors)
    np.testing.assert_array_equal(np.asarray(joined), np.asarray(vectors))


def test_check_names_the_source_and_length():
    check_smpl(np.zeros(85), "fine")
    with pytest.raises(ValueError, match=r"people/0001\.p.*85.*\(72,\)"):
        check_smpl(np.zeros(72), "people/0001.p")
    with pytest.raises(ValueError, match="85"):
        check_smpl(np.float32(1.0), "scalar")
    with pytest.raises(ValueError, match="rotations"):
        join_smpl(np.zeros((23, 3)), np.zeros(10), np.zeros(3))
