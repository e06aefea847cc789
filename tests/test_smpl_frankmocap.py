"""The restricted unpickler, the FrankMocap record -> 85-vector, and the .npz tool."""

import os
import pickle

import numpy as np
import pytest

from deepfashion_fixture import FRANKMOCAP_PICKLES
from upgpt_jax.smpl import (
    axis_angle_to_matrix,
    load_frankmocap_pickle,
    load_smpl_vector,
    smpl_from_frankmocap,
)
from upgpt_jax.smpl.__main__ import main as smpl_tool
from upgpt_jax.smpl.frankmocap import RefusedPickleError, load_restricted_pickle

SAMPLES = FRANKMOCAP_PICKLES


class _RunsShell:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CallsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("payload", ["shell", "eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "executed"
    evil = _RunsShell(marker) if payload == "shell" else _CallsEval()
    path = tmp_path / "evil.p"
    # Hidden inside what looks like a FrankMocap record.
    path.write_bytes(pickle.dumps([{"pred_betas": np.zeros((1, 10), np.float32), "x": evil}]))
    with pytest.raises(RefusedPickleError, match=r"evil\.p.*refused.*(system|eval)"):
        load_frankmocap_pickle(path)
    assert not marker.exists()


def test_numpy_arrays_scalars_and_containers_load(tmp_path):
    content = [
        {
            "a": np.arange(6, dtype=np.float32).reshape(2, 3),
            "s": np.float64(2.5),
            "t": (1, "x"),
            "set": {1, 2},
        },
        [np.int64(3), None, b"bytes"],
    ]
    path = tmp_path / "fine.p"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps(content, protocol=protocol))
        loaded = load_restricted_pickle(path)
        np.testing.assert_array_equal(loaded[0]["a"], content[0]["a"])
        assert loaded[0]["s"] == 2.5 and loaded[0]["t"] == (1, "x") and loaded[0]["set"] == {1, 2}
        assert loaded[1] == [3, None, b"bytes"]


def test_corrupt_and_incomplete_files_name_the_file_and_key(tmp_path):
    truncated = tmp_path / "truncated.p"
    truncated.write_bytes(SAMPLES[0].read_bytes()[:1000])
    with pytest.raises(pickle.UnpicklingError, match="truncated.p"):
        load_frankmocap_pickle(truncated)
    empty = tmp_path / "empty.p"
    empty.write_bytes(pickle.dumps([]))
    with pytest.raises(ValueError, match="empty.p.*no person"):
        load_frankmocap_pickle(empty)
    record = {"pred_body_pose": np.zeros((1, 72)), "pred_betas": np.zeros((1, 10))}
    with pytest.raises(KeyError, match="person.p.*pred_camera"):
        smpl_from_frankmocap(record, source="person.p")
    record["pred_camera"] = np.zeros(4)
    with pytest.raises(ValueError, match="person.p.*pred_camera.*3 numbers"):
        smpl_from_frankmocap(record, source="person.p")


def test_sample_pickles_give_the_original_85_vector():
    assert len(SAMPLES) == 3, f"expected the three sample pickles, found {SAMPLES}"
    for path in SAMPLES:
        record = load_frankmocap_pickle(path)
        vector = load_smpl_vector(path)
        assert vector.shape == (85,) and vector.dtype == np.float32
        # The original: concatenate((pred_body_pose, pred_betas, pred_camera[None]), axis=1).
        original = np.concatenate(
            (record["pred_body_pose"], record["pred_betas"], record["pred_camera"][None]), axis=1
        )
        np.testing.assert_array_equal(vector, original.reshape(85))
        # pred_body_pose is axis-angle with the global orientation first: it matches pred_rotmat.
        np.testing.assert_allclose(
            axis_angle_to_matrix(vector[:72].reshape(24, 3).astype(np.float64)),
            record["pred_rotmat"][0],
            atol=1e-5,
        )


def test_npz_tool_round_trips(tmp_path, capsys):
    assert smpl_tool(["to-npz", *map(str, SAMPLES), "--out", str(tmp_path / "out")]) == 0
    for path in SAMPLES:
        record = load_frankmocap_pickle(path)
        with np.load(tmp_path / "out" / (path.stem + ".npz"), allow_pickle=False) as stored:
            assert set(stored.files) == set(record) | {"smpl"}
            for key, value in record.items():
                np.testing.assert_array_equal(stored[key], np.asarray(value))
            np.testing.assert_array_equal(stored["smpl"], load_smpl_vector(path))
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps(_RunsShell(tmp_path / "executed")))
    assert smpl_tool(["to-npz", str(evil), "--out", str(tmp_path / "out")]) == 1
    assert "evil.p" in capsys.readouterr().err and not (tmp_path / "executed").exists()
    with pytest.raises(SystemExit):  # two inputs that would write the same .npz
        smpl_tool(["to-npz", str(SAMPLES[0]), str(tmp_path / "pose.p"), "--out", str(tmp_path / "out")])
