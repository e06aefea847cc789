"""Person masks for new poses: a FrankMocap file's own projected mesh, the mannequin only for bare vectors.

The original reads a person mask file for every pose (upstream app.py:115-143; the 256x192 0/1
`<pose>_mask.png` resized nearest to the latents). Without one, the closest thing the pose file
holds is FrankMocap's mesh projected into that 256x192 photo (`pred_vertices_img`, `faces`); the
test writes such a pickle with a known mesh (a rectangle) and checks the mask against the
rectangle's pixels resized by PIL's NEAREST (torchvision's Resize on PIL images), and that
samples.json says which mask was drawn.
"""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from upgpt_jax.sampling import ConditionError, TaskContext, plan
from upgpt_jax.sampling.outputs import write_job
from upgpt_jax.sampling.sources import mesh_mask
from upgpt_jax.smpl.__main__ import convert_to_npz

# A rectangle in FrankMocap's 256x192 pixel frame: pixel centres (c + 0.5, r + 0.5) inside it are
# columns 40..149 and rows 20..229.
RECTANGLE = np.array([[40.0, 20.0, 5.0], [150.0, 20.0, 5.0], [150.0, 230.0, 5.0], [40.0, 230.0, 5.0]], np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)


def _rectangle_mask(size: tuple[int, int]) -> np.ndarray:
    """The rectangle's pixels in the 256x192 frame, resized to `size` by PIL's NEAREST."""
    frame = np.zeros((256, 192), np.uint8)
    frame[20:230, 40:150] = 255
    return np.asarray(Image.fromarray(frame).resize(size[::-1], Image.Resampling.NEAREST)) > 0


def _smpl() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.3, 85).astype(np.float32)


def _write_pickle(path, **overrides):
    """A FrankMocap-style pickle (a list with one person's dict of numpy arrays)."""
    smpl = _smpl()
    person = dict(pred_body_pose=smpl[None, :72], pred_betas=smpl[None, 72:82], pred_camera=smpl[82:],
                  pred_vertices_img=RECTANGLE, faces=FACES)
    person.update(overrides)
    with open(path, "wb") as handle:
        pickle.dump([{key: value for key, value in person.items() if value is not None}], handle)
    return path


@pytest.fixture(scope="module")
def context(tiny_config):
    return TaskContext(tiny_config)


def test_frankmocap_pickle_mask_is_its_mesh_and_samples_json_says_so(context, tmp_path):
    path = _write_pickle(tmp_path / "pose.p")
    job = plan(context, {"task": "generate", "text": "a woman", "smpl": str(path), "num": 1})
    person = job.people[0]
    np.testing.assert_array_equal(person.smpl, _smpl())
    expected = _rectangle_mask(context.image_size)
    assert expected.sum() > 100
    np.testing.assert_array_equal(person.mask, expected)
    folder = write_job(tmp_path / "out", job, np.zeros((1, *context.image_size, 3), np.uint8), {})
    conditions = json.loads((folder / "samples.json").read_text())["samples"][0]["conditions"]
    assert conditions["mask"] == "frankmocap_vertices"


def test_its_npz_and_pose_transfer_targets_use_the_mesh_too(context, tmp_path):
    npz = convert_to_npz(str(_write_pickle(tmp_path / "pose.p")), str(tmp_path))
    folder = tmp_path / "styles"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "top.jpg")
    job = plan(context, {"task": "pose_transfer", "style_folder": str(folder), "text": "a woman",
                         "source_smpl": _smpl().tolist(), "target_smpl": npz})
    np.testing.assert_array_equal(job.people[0].mask, _rectangle_mask(context.image_size))
    assert job.people[0].origin["mask"] == "frankmocap_vertices"


def test_mesh_mask_scales_the_256x192_frame_to_the_image():
    """At 512x384 (configs/upgpt_512.py) the frame's mask is upsampled, as the original resized its masks."""
    np.testing.assert_array_equal(mesh_mask(RECTANGLE, FACES, (512, 384)), _rectangle_mask((512, 384)))
    np.testing.assert_array_equal(mesh_mask(RECTANGLE, FACES, (256, 192)), _rectangle_mask((256, 192)))


def test_bare_vectors_and_meshless_pickles_get_the_mannequin(context, tmp_path):
    vector = tmp_path / "pose.json"
    vector.write_text(json.dumps(_smpl().tolist()))
    meshless = _write_pickle(tmp_path / "meshless.p", pred_vertices_img=None)
    for spec in (str(vector), str(meshless)):
        person = plan(context, {"task": "generate", "text": "a woman", "smpl": spec, "num": 1}).people[0]
        assert person.origin["mask"] == "mannequin"
        assert person.mask.any() and not np.array_equal(person.mask, _rectangle_mask(context.image_size))
    mask_file = tmp_path / "mask.png"
    Image.fromarray(_rectangle_mask(context.image_size).astype(np.uint8)).save(mask_file)
    person = plan(context, {"task": "generate", "text": "a woman", "smpl": str(meshless), "mask": str(mask_file),
                            "num": 1}).people[0]
    assert person.origin["mask"] == "file"


def test_bad_meshes_and_pickles_are_one_clear_error(context, tmp_path):
    bad_faces = _write_pickle(tmp_path / "bad_faces.p", faces=np.array([[0, 1, 7]], np.uint32))
    with pytest.raises(ConditionError, match=r"bad_faces\.p.*faces"):
        plan(context, {"task": "generate", "text": "a woman", "smpl": str(bad_faces)})
    flat = _write_pickle(tmp_path / "flat.p", pred_vertices_img=np.zeros(12, np.float32))
    with pytest.raises(ConditionError, match=r"flat\.p: pred_vertices_img must be"):
        plan(context, {"task": "generate", "text": "a woman", "smpl": str(flat)})

    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    hostile = tmp_path / "hostile.p"
    hostile.write_bytes(pickle.dumps([{"pred_body_pose": Exploit()}]))
    with pytest.raises(ConditionError, match="refused to load global 'builtins.print'"):
        plan(context, {"task": "generate", "text": "a woman", "smpl": str(hostile)})
