"""Person masks: the triangle rasteriser, the sample masks, the bbox fallback, the smplx path."""

import pathlib
import pickle
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from deepfashion_fixture import FRANKMOCAP_PICKLES
from upgpt_jax.smpl import (
    JOINT_NAMES,
    NUM_JOINTS,
    PARENTS,
    forward_kinematics,
    load_frankmocap_pickle,
    load_smpl_vector,
    masks,
    project_weak_perspective,
)
from upgpt_jax.smpl.kinematics import MEAN_REST_JOINTS
from upgpt_jax.smpl.masks import mask_from_bbox, mask_from_smpl, mask_from_vertices

SAMPLES = FRANKMOCAP_PICKLES
# Measured IoU of the rasterised FrankMocap body against the samples' parser masks (clothes and
# hair are not in the SMPL body, and the fit is a few pixels off): 0.842, 0.725, 0.776.
MIN_SAMPLE_IOU = 0.70


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _dilate(mask):
    """Grow a mask by one pixel in the 8-neighbourhood."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    wider = grown.copy()
    wider[:, 1:] |= grown[:, :-1]
    wider[:, :-1] |= grown[:, 1:]
    return wider


def test_square_by_hand():
    # Two triangles covering [2, 6] x [2, 5]: pixel centres x in 2.5..5.5, y in 2.5..4.5.
    vertices = np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 5.0], [2.0, 5.0]])
    faces = np.array([[0, 1, 2], [0, 3, 2]])  # opposite windings
    expected = np.zeros((8, 9), bool)
    expected[2:5, 2:6] = True
    np.testing.assert_array_equal(mask_from_vertices(vertices, faces, (8, 9)), expected)
    # Clipped at the image border, and degenerate or off-image triangles draw nothing.
    shifted = vertices + [-4.0, 4.0]
    clipped = np.zeros((8, 9), bool)
    clipped[6:8, 0:2] = True
    np.testing.assert_array_equal(mask_from_vertices(shifted, faces, (8, 9)), clipped)
    line = np.array([[0.0, 0.0], [8.0, 8.0], [4.0, 4.0]])
    assert not mask_from_vertices(line, np.array([[0, 1, 2]]), (8, 9)).any()
    with pytest.raises(ValueError, match="faces"):
        mask_from_vertices(vertices, np.array([[0, 1, 4]]), (8, 9))
    with pytest.raises(ValueError, match="NaN"):
        mask_from_vertices(np.where(np.arange(4)[:, None] == 1, np.nan, vertices), faces, (8, 9))


def test_random_triangles_match_brute_force_barycentric():
    rng = np.random.default_rng(0)
    height, width = 40, 30
    vertices = rng.uniform([-5, -5], [width + 5, height + 5], size=(60, 2))
    faces = rng.integers(0, 60, size=(25, 3))
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    rows, columns = np.mgrid[0:height, 0:width]
    centres = np.stack([columns + 0.5, rows + 0.5], -1).reshape(-1, 2)
    expected = np.zeros(height * width, bool)
    for face in faces:
        a, b, c = vertices[face]
        # Solve centre = a + u (b - a) + v (c - a): inside when u, v >= 0 and u + v <= 1.
        u, v = np.linalg.solve(np.stack([b - a, c - a], axis=1), (centres - a).T)
        expected |= (u >= 0) & (v >= 0) & (u + v <= 1)
    np.testing.assert_array_equal(
        mask_from_vertices(vertices, faces, (height, width)), expected.reshape(height, width)
    )


def test_chunking_does_not_change_the_result(monkeypatch):
    record = load_frankmocap_pickle(SAMPLES[0])
    whole = mask_from_vertices(record["pred_vertices_img"], record["faces"], (256, 192))
    monkeypatch.setattr(masks, "_PAIRS_PER_CHUNK", 1000)
    np.testing.assert_array_equal(
        mask_from_vertices(record["pred_vertices_img"], record["faces"], (256, 192)), whole
    )


def test_sample_meshes_match_pil_and_the_sample_masks():
    assert len(SAMPLES) == 3, f"expected the three sample pickles, found {SAMPLES}"
    for path in SAMPLES:
        record = load_frankmocap_pickle(path)
        reference = np.array(Image.open(path.with_name(path.stem + "_mask.png"))) > 0
        assert reference.shape == (256, 192)
        ours = mask_from_vertices(record["pred_vertices_img"], record["faces"], reference.shape)
        # PIL's polygon fill is another rasteriser; it rounds vertices to whole pixels and
        # also fills every pixel an edge touches, so it agrees up to a one-pixel rim.
        canvas = Image.new("1", (192, 256))
        draw = ImageDraw.Draw(canvas)
        for triangle in record["pred_vertices_img"][:, :2][record["faces"]] - 0.5:
            draw.polygon([tuple(point) for point in triangle], fill=1)
        pil = np.array(canvas)
        assert (ours & ~pil).sum() < 0.005 * ours.sum()
        assert (pil & ~_dilate(ours)).sum() < 0.001 * ours.sum()
        assert _iou(ours, reference) > MIN_SAMPLE_IOU


def test_bbox_fallback_by_hand():
    mask = np.zeros((10, 8), np.uint8)
    mask[2, 3] = mask[6, 1] = mask[4, 5] = 255
    expected = np.zeros((10, 8), bool)
    expected[2:7, 1:6] = True  # rows 2..6 and columns 1..5, inclusive, as the original's get_bbox
    np.testing.assert_array_equal(mask_from_bbox(mask, (10, 8)), expected)
    assert not mask_from_bbox(np.zeros((10, 8)), (10, 8)).any()
    # A box in pixel coordinates: centres 1.5..5.5 in x, 2.5..6.5 in y; clipped to the image.
    np.testing.assert_array_equal(mask_from_bbox(np.array([1.0, 2.0, 6.0, 7.0]), (10, 8)), expected)
    clipped = np.zeros((10, 8), bool)
    clipped[8:, 6:] = True
    np.testing.assert_array_equal(mask_from_bbox(np.array([6.2, 7.6, 20.0, 30.0]), (10, 8)), clipped)
    with pytest.raises(ValueError, match="box"):
        mask_from_bbox(np.zeros(3), (10, 8))


def _write_synthetic_smpl(model_dir: pathlib.Path, rng) -> dict:
    """A SMPL-format model: a 53 x 130 grid of vertices (6890) shaped like a flat body.

    Joints are single vertices (one-hot J_regressor) near MEAN_REST_JOINTS, every vertex is
    skinned rigidly to its nearest joint, shape directions are random, pose correctives zero.
    """
    columns, rows = np.meshgrid(np.linspace(-0.8, 0.8, 53), np.linspace(-1.2, 0.5, 130))
    v_template = np.stack([columns.ravel(), rows.ravel(), np.zeros(columns.size)], -1)
    grid = np.arange(v_template.shape[0]).reshape(130, 53)
    corners = grid[:-1, :-1].ravel(), grid[:-1, 1:].ravel(), grid[1:, 1:].ravel(), grid[1:, :-1].ravel()
    faces = np.concatenate([np.stack(corners[:3], -1), np.stack([corners[0], corners[2], corners[3]], -1)])
    joint_vertex = np.argmin(
        np.linalg.norm(v_template[None] - MEAN_REST_JOINTS[:, None] * [1, 1, 0], axis=-1), axis=1
    )
    j_regressor = np.zeros((NUM_JOINTS, v_template.shape[0]))
    j_regressor[np.arange(NUM_JOINTS), joint_vertex] = 1.0
    nearest = np.argmin(np.linalg.norm(v_template[:, None] - v_template[joint_vertex][None], axis=-1), axis=1)
    model = {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=0.01, size=(v_template.shape[0], 3, 10)),
        "posedirs": np.zeros((v_template.shape[0], 3, 207)),
        "J_regressor": j_regressor,
        "weights": np.eye(NUM_JOINTS)[nearest],
        "kintree_table": np.stack([np.array(PARENTS) % 2**32, np.arange(NUM_JOINTS)]),
        "f": faces.astype(np.uint32),
    }
    (model_dir / "smpl").mkdir(parents=True)
    with open(model_dir / "smpl" / "SMPL_NEUTRAL.pkl", "wb") as handle:
        pickle.dump(model, handle)  # writing is safe; smplx reads it back
    return model


def _pose_rigid_segments(model, smpl):
    """Reference posing, independent of smplx: each vertex follows its joint's rigid motion."""
    betas = smpl[72:82]
    shaped = model["v_template"] + model["shapedirs"] @ betas
    joints = model["J_regressor"] @ shaped
    positions, rotations = forward_kinematics(smpl[:72].reshape(NUM_JOINTS, 3), joints)
    owner = model["weights"].argmax(axis=1)
    return np.einsum("vij,vj->vi", rotations[owner], shaped - joints[owner]) + positions[owner]


def test_mask_from_smpl_through_smplx(tmp_path):
    masks._load_smpl_model.cache_clear()
    model = _write_synthetic_smpl(tmp_path, np.random.default_rng(1))
    smpl = load_smpl_vector(SAMPLES[0]).astype(np.float64)  # a real pose, global half turn included
    shoulder = JOINT_NAMES.index("left_shoulder") * 3
    smpl[shoulder : shoulder + 3] = [0.0, 0.0, 1.2]
    smpl[82:] = [0.5, 0.0, 0.0]  # zoom out so the whole flat body is in the frame

    def reference(vector):
        posed = _pose_rigid_segments(model, vector)
        return mask_from_vertices(
            project_weak_perspective(posed, vector[82:], (256, 192)), model["f"], (256, 192)
        )

    expected = reference(smpl)
    ours = mask_from_smpl(smpl.astype(np.float32), tmp_path, (256, 192))
    assert 5000 < expected.sum() < 0.5 * expected.size
    assert (ours != expected).sum() <= 0.002 * expected.sum()  # float32 in smplx may move edge pixels
    # The comparison is sensitive to every part of the vector smplx receives.
    for part in (slice(0, 3), slice(shoulder, shoulder + 3), slice(72, 82)):
        changed = smpl.copy()
        changed[part] = 0.0
        assert (reference(changed) != expected).sum() > 0.02 * expected.sum()


def test_mask_from_smpl_errors(tmp_path, monkeypatch):
    masks._load_smpl_model.cache_clear()
    smpl = np.zeros(85, np.float32)
    with pytest.raises(FileNotFoundError, match="SMPL_NEUTRAL.pkl"):
        mask_from_smpl(smpl, tmp_path, (64, 48))
    monkeypatch.setitem(sys.modules, "smplx", None)  # as if smplx were not installed
    masks._load_smpl_model.cache_clear()
    with pytest.raises(ImportError, match=r'pip install -e "\.\[smpl\]"'):
        mask_from_smpl(smpl, tmp_path, (64, 48))
    with pytest.raises(ValueError, match="85"):
        mask_from_smpl(smpl[:80], tmp_path, (64, 48))
