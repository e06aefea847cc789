"""The synthetic-people renderer: geometry, masks, camera, poses and the pose prior."""
import glob
import os

import numpy as np
import pytest

from upgpt_jax.data.synthetic import default_prior, identity_from_id, prior_from_frankmocap, render, sample_pose
from upgpt_jax.data.synthetic.mannequin import PART_INDEX
from upgpt_jax.data.synthetic.pose_prior import DEFAULT_BODY_POSES
from upgpt_jax.data.synthetic.raster import round_cone_distance
from upgpt_jax.data.synthetic.render import render_raster
from upgpt_jax.smpl.kinematics import default_crop_box
from upgpt_jax.smpl.layout import CAMERA, JOINT_INDEX

SAMPLE_POSES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "samples",
                            "deepfashion", "app_cache", "pose")
SIZE = (64, 48)


def _person(index: int):
    identity = identity_from_id(index)
    return identity, sample_pose(np.random.default_rng([99, index]), default_prior(), identity.betas, SIZE)


def testround_cone_distance_matches_union_of_discs():
    """Outside the shape the analytic distance equals the distance to the union of swept discs."""
    rng = np.random.default_rng(0)
    cones = [(3.0, 1.5, (10.0, 4.0)), (2.0, 2.0, (-6.0, 8.0)), (4.0, 1.0, (1.0, 1.0)), (1.0, 5.0, (3.0, 0.0))]
    for ra, rb, end in cones:
        points = rng.uniform(-15, 20, (4000, 2))
        t = np.linspace(0, 1, 4001)[:, None]
        centres = t * np.array(end)[None]
        radii = ra + (rb - ra) * t[:, 0]
        union = np.min(np.linalg.norm(points[None] - centres[:, None], axis=-1) - radii[:, None], axis=0)
        bx, by = end
        got = round_cone_distance(points[:, 0], points[:, 1], bx, by, np.hypot(bx, by), ra, rb)
        outside = union > 0
        np.testing.assert_allclose(got[outside], union[outside], atol=2e-3)
        assert np.all(got[union < -0.01] < 0)


def test_mask_is_exactly_where_the_person_is_drawn():
    for index in range(12):
        identity, smpl = _person(index)
        image, mask = render(identity, smpl, SIZE)
        raster = render_raster(identity, smpl, SIZE)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8 and mask.shape == SIZE and mask.dtype == bool
        np.testing.assert_array_equal(mask, raster.alpha > 0)
        assert np.all(image[~mask] == np.array(identity.background, np.uint8))
        fully_covered = raster.alpha >= 1.0
        assert fully_covered.sum() > 100
        differs = np.abs(image.astype(int) - np.array(identity.background)).max(axis=-1) > 0
        assert np.all(differs[fully_covered])


def test_camera_translation_shifts_the_mask_by_the_expected_pixels():
    identity, smpl = _person(3)
    side = default_crop_box(SIZE)[2]
    mask = render(identity, smpl, SIZE)[1]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    # Shift towards the side with room (the person stays inside the image).
    room = (cols[0], SIZE[1] - 1 - cols[-1]), (rows[0], SIZE[0] - 1 - rows[-1])
    for axis in (0, 1):  # x then y
        shift_pixels = 2.0 if room[axis][1] > 2 else -2.0
        assert min(room[axis]) >= 0 and max(room[axis]) > 2
        moved = smpl.copy()
        moved[CAMERA.start + 1 + axis] += np.float32(2 * shift_pixels / side)
        before, after = np.argwhere(mask).mean(axis=0), np.argwhere(render(identity, moved, SIZE)[1]).mean(axis=0)
        expected = np.zeros(2)
        expected[1 - axis] = shift_pixels  # argwhere gives (row, column)
        np.testing.assert_allclose(after - before, expected, atol=0.02)


def test_a_person_outside_the_image_draws_nothing():
    identity, smpl = _person(4)
    away = smpl.copy()
    away[CAMERA.start + 1] += 5.0  # far to the right
    image, mask = render(identity, away, SIZE)
    assert not mask.any() and np.all(image == np.array(identity.background, np.uint8))


def test_camera_scale_scales_the_person():
    identity, smpl = _person(5)
    bigger = smpl.copy()
    bigger[CAMERA.start] *= 1.1
    area, bigger_area = render(identity, smpl, SIZE)[1].sum(), render(identity, bigger, SIZE)[1].sum()
    assert 1.1 < bigger_area / area < 1.35


def test_raising_an_arm_moves_only_the_arm():
    identity, smpl = _person(7)
    raised = smpl.copy()
    shoulder = 3 * JOINT_INDEX["left_shoulder"]
    raised[shoulder:shoulder + 3] = (0.0, 0.0, 1.2)  # arm up and out, sideways
    mask, raised_mask = render(identity, smpl, SIZE)[1], render(identity, raised, SIZE)[1]
    changed = mask != raised_mask
    assert changed.sum() > 20
    rows = np.flatnonzero(mask.any(axis=1))
    legs = slice(rows[0] + int(0.7 * (rows[-1] - rows[0])), None)  # below the hands
    assert not changed[legs].any()


def test_sampled_people_are_upright_and_in_frame():
    for index in range(60):
        identity, smpl = _person(index)
        raster = render_raster(identity, smpl, SIZE)
        mask = raster.alpha > 0
        assert mask.sum() > 150
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        rows = np.flatnonzero(mask.any(axis=1))
        assert 0.7 * SIZE[0] <= rows[-1] - rows[0] + 1 <= 0.96 * SIZE[0]
        head = np.isin(raster.part, [PART_INDEX["face"], PART_INDEX["hair"]])
        shoes = raster.part == PART_INDEX["shoes"]
        torso = raster.part == PART_INDEX["top"]
        assert np.argwhere(head)[:, 0].mean() < np.argwhere(torso)[:, 0].mean() < np.argwhere(shoes)[:, 0].mean()


def test_supersampling_agrees_with_analytic_antialiasing():
    identity, smpl = _person(11)
    image, mask = render(identity, smpl, SIZE)
    fine_image, fine_mask = render(identity, smpl, SIZE, supersample=3)
    assert np.abs(image.astype(float) - fine_image).mean() < 2.0
    assert (mask != fine_mask).sum() < 0.1 * mask.sum()


def test_render_is_deterministic_and_follows_the_identity():
    identity, smpl = _person(2)
    first, second = render(identity, smpl, SIZE), render(identity, smpl, SIZE)
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()
    other = identity_from_id(4)
    assert render(other, smpl, SIZE)[0].tobytes() != first[0].tobytes()


def test_embedded_prior_matches_the_sample_pickles():
    paths = sorted(glob.glob(os.path.join(SAMPLE_POSES, "pose_*", "*.p")))
    assert len(paths) == 3, f"expected the three sample poses under {SAMPLE_POSES}"
    np.testing.assert_allclose(prior_from_frankmocap(paths).body_poses, DEFAULT_BODY_POSES, atol=5.1e-4)


def test_sample_pose_is_deterministic_and_varied():
    prior = default_prior()
    betas = identity_from_id(1).betas
    poses = np.stack([sample_pose(np.random.default_rng(i), prior, betas) for i in range(20)])
    again = sample_pose(np.random.default_rng(0), prior, betas)
    assert poses.dtype == np.float32 and poses.shape == (20, 85)
    np.testing.assert_array_equal(poses[0], again)
    np.testing.assert_array_equal(poses[:, 72:82], np.broadcast_to(np.float32(betas), (20, 10)))
    assert np.std(poses[:, 3:72], axis=0).max() > 0.2  # body joints vary
    assert np.std(poses[:, 82:], axis=0).min() > 0.005  # and so does the camera
    with pytest.raises(ValueError, match="85"):
        render(identity_from_id(1), poses[0, :80], SIZE)
