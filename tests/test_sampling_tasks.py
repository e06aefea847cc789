"""The sampling pipeline end to end on the tiny config: a checkpointed run -> the four tasks' files.

The run is a real train.py workdir layout (orbax checkpoint with state, data state and config)
written from random weights, so no training is needed; one sampler (and one editor) compilation serves the
task tests.
"""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from upgpt_jax import sampling
from upgpt_jax.sampling.conditions import ConditionError, read_smpl
from upgpt_jax.smpl.interpolate import interpolate_smpl

from conftest import scaled_random_params

SETTINGS = sampling.SamplingSettings(method="ddim", num_steps=4, batch_size=8,
                                     guidance=(("pose", 1.0), ("style", 2.0), ("text", 2.0)))


@pytest.fixture(scope="module")
def loaded(checkpointed_run):
    return sampling.load_from_workdir(checkpointed_run)


def test_loads_the_ema_weights_and_the_run_config(loaded, tiny_model, tiny_config):
    params = scaled_random_params(tiny_model[1])
    np.testing.assert_array_equal(loaded.params["unet"]["conv_in"]["kernel"], params["unet"]["conv_in"]["kernel"])
    np.testing.assert_array_equal(loaded.params["vae"]["decoder"]["conv_out"]["kernel"],
                                  params["vae"]["decoder"]["conv_out"]["kernel"])
    assert loaded.source["step"] == 7 and loaded.source["weights"] == "ema"
    assert tuple(loaded.config.model.image_size) == tuple(tiny_config.model.image_size)


def test_converted_weights_bring_their_condition_statistics_or_are_refused(tiny_model, tiny_config, tmp_path):
    """Converted params that hold condition_stats (e.g. exported from a run here) are sampled with them;
    without them a standardizing config is refused, naming the folder and the setting to change.
    Fusion nulls the weights lack are initialised and named in the source, beside the converted files."""
    from upgpt_jax.weights.params_io import save_params

    params = scaled_random_params(tiny_model[1])
    params["condition_stats"] = {name: value + 0.5 for name, value in params["condition_stats"].items()}
    sources = [{"path": "/weights/upgpt.ckpt", "bytes": 123}]  # as `python -m upgpt_jax.convert` records them
    save_params(tmp_path / "with", params, {"sources": sources})
    loaded = sampling.load_from_params(tmp_path / "with", tiny_config)
    assert loaded.source["converted_from"] == sources
    for name, value in params["condition_stats"].items():
        np.testing.assert_array_equal(np.asarray(loaded.params["condition_stats"][name]), value)

    assert loaded.source["initialised"] == []
    without = {name: tree for name, tree in params.items() if name != "condition_stats"}
    without["fusion"] = {name: tree for name, tree in without["fusion"].items() if name != "null_text"}
    save_params(tmp_path / "without", without, {"source": "test"})
    with pytest.raises(ValueError, match="without.*no condition statistics.*standardize_conditions=False"):
        sampling.load_from_params(tmp_path / "without", tiny_config)
    plain = tiny_config.copy_and_resolve_references()
    plain.model.standardize_conditions = False
    plain_loaded = sampling.load_from_params(tmp_path / "without", plain)
    assert "condition_stats" not in plain_loaded.params
    assert plain_loaded.source["initialised"] == ["null_text"]  # the missing null is freshly initialised


@pytest.fixture(scope="module")
def outputs(loaded, tmp_path_factory):
    """All four tasks from the dataset's defaults, in one batch job (the sampler and the editor compile once)."""
    out = tmp_path_factory.mktemp("samples")
    requests = [
        {"task": "generate", "num": 2, "name": "gen"},
        {"task": "pose_transfer", "example": 3, "name": "transfer"},
        {"task": "edit", "example": 3, "edits": ["top=text:a red top", "bottom=example:5"], "name": "edit"},
        {"task": "interpolate", "example": 3, "frames": 4, "name": "interp"},
        {"task": "pose_transfer", "example": 3, "name": "transfer_again"},
    ]
    folders = sampling.run_requests(loaded, requests, out, SETTINGS, progress=False)
    return out, {folder.name: folder for folder in folders}


def test_every_task_writes_its_files(outputs, tiny_config):
    _, folders = outputs
    height, width = tiny_config.model.image_size
    expected_samples = {"gen": 2, "transfer": 1, "edit": 2, "interp": 4, "transfer_again": 1}
    for name, count in expected_samples.items():
        record = json.loads((folders[name] / "samples.json").read_text())
        assert len(record["samples"]) == count and record["checkpoint"]["step"] == 7
        assert record["sampling"]["num_steps"] == 4
        for sample in record["samples"]:
            image = np.asarray(Image.open(folders[name] / sample["file"]))
            assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert (folders[name] / "grid.png").is_file()
    assert (folders["transfer"] / "ground_truth_000.png").is_file()
    assert (folders["transfer"] / "source_000.png").is_file()
    gif = Image.open(folders["interp"] / "animation.gif")
    assert gif.n_frames == 2 * 4 - 2  # forwards and back


def test_same_seed_same_image_whatever_the_batch(outputs):
    _, folders = outputs
    first = np.asarray(Image.open(folders["transfer"] / "sample_000.png"))
    again = np.asarray(Image.open(folders["transfer_again"] / "sample_000.png"))
    np.testing.assert_array_equal(first, again)  # the two sit at different batch positions
    assert np.std(first.astype(np.float32)) > 1.0


def test_edit_changes_the_edited_sample_only_through_its_conditions(outputs):
    _, folders = outputs
    record = json.loads((folders["edit"] / "samples.json").read_text())
    unedited, edited = (sample["conditions"] for sample in record["samples"])
    assert edited["style_texts"] == {"top": "a red top"} and "top" not in edited["style_images"]
    assert "bottom" in edited["style_images"] and unedited["smpl"] == edited["smpl"]
    images = [np.asarray(Image.open(folders["edit"] / sample["file"])) for sample in record["samples"]]
    assert np.abs(images[0].astype(int) - images[1].astype(int)).max() > 0


def test_edits_keep_the_unedited_sample_outside_the_inferred_region(outputs, loaded):
    """Sampler.edit: the unedited image is the plain sample; an edit that changes nothing is the
    unedited image itself with an empty region; edit_region "whole" is the plain sample of the
    edited person (the original's edit). The edit job records its region as a reference image."""
    _, folders = outputs
    context = sampling.TaskContext(loaded.config)
    job = sampling.plan(context, {"task": "edit", "example": 3, "edits": ["top=text:a red top"], "seed": 5})
    person, edited = job.people
    sampler = sampling.Sampler(loaded, SETTINGS)
    plain = sampler([person, edited], [5, 5])
    unedited, same, regions = sampler.edit([person], [person], [5])
    assert np.abs(unedited[0].astype(int) - plain[0]).max() <= 1  # two programs: equal up to rounding
    np.testing.assert_array_equal(same[0], unedited[0])
    assert regions.shape == (1, 16, 12) and not regions.any()
    whole = sampling.Sampler(loaded, dataclasses.replace(SETTINGS, edit_region="whole"))
    _, redrawn, everywhere = whole.edit([person], [edited], [5])
    assert np.abs(redrawn[0].astype(int) - plain[1]).max() <= 1
    assert everywhere.all()
    region = np.asarray(Image.open(folders["edit"] / "edit_region_000.png"))
    assert region.shape == plain.shape[1:] and set(np.unique(region).tolist()) <= {0, 255}
    with pytest.raises(ValueError, match="edit_region must be one of"):
        sampling.Sampler(loaded, dataclasses.replace(SETTINGS, edit_region="mask"))


def test_interpolation_endpoints_are_the_input_poses(outputs, loaded):
    _, folders = outputs
    record = json.loads((folders["interp"] / "samples.json").read_text())
    examples = sampling.TaskContext(loaded.config).examples
    start, end = examples.person(3, "source").smpl, examples.person(3).smpl
    frames = [np.asarray(sample["conditions"]["smpl"], np.float32) for sample in record["samples"]]
    np.testing.assert_allclose(frames[0], start, atol=1e-6)  # JSON keeps 6 decimals
    np.testing.assert_allclose(frames[-1], end, atol=1e-6)
    job = sampling.plan(sampling.TaskContext(loaded.config), {"task": "interpolate", "example": 3, "frames": 4})
    np.testing.assert_array_equal(job.people[0].smpl, start)
    np.testing.assert_array_equal(job.people[-1].smpl, end)
    np.testing.assert_allclose(np.stack([p.smpl for p in job.people]), interpolate_smpl(start, end, 4, "slerp"),
                               atol=1e-6)
    assert len({seed for seed in job.seeds}) == 1  # one noise for every frame
    assert record["notes"] == {"start_smpl": "example:3:source (test example 3's source pose: no start_smpl given)",
                               "end_smpl": "example:3 (test example 3's target pose: no end_smpl given)"}


@pytest.mark.parametrize("request_, message", [
    ({"task": "generate", "text": "a person", "smpl": [0.0] * 84}, "85 finite numbers"),
    ({"task": "generate", "text": "a person", "smpl": "missing.p"}, "does not exist"),
    ({"task": "edit", "example": 1, "edits": ["hat=text:red"]}, "unknown style part 'hat'"),
    ({"task": "edit", "example": 1, "edits": ["top=missing.jpg"]}, "missing.jpg"),
    ({"task": "dance"}, "unknown task"),
    ({"task": "generate", "smpl_file": "x"}, "unknown keys"),
])
def test_bad_requests_fail_before_compute(loaded, request_, message):
    with pytest.raises(ConditionError, match=message):
        sampling.plan_requests(loaded.config, [request_])


def test_smpl_files_of_every_kind(tmp_path):
    vector = np.linspace(-1, 1, 85).astype(np.float32)
    np.savez(tmp_path / "a.npz", smpl=vector)
    (tmp_path / "a.json").write_text(json.dumps({"smpl": vector.tolist()}))
    np.save(tmp_path / "a.npy", vector)
    for name in ("a.npz", "a.json", "a.npy"):
        np.testing.assert_array_equal(read_smpl(tmp_path / name), vector)
    np.save(tmp_path / "bad.npy", vector[:80])
    with pytest.raises(ConditionError, match="bad.npy"):
        read_smpl(tmp_path / "bad.npy")


def test_sample_cli_reports_bad_input_without_traceback(checkpointed_run, tmp_path):
    result = subprocess.run(
        [sys.executable, "sample.py", "--workdir", str(checkpointed_run), "--task", "generate", "--text", "a person",
         "--smpl", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "nope.npz does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_single_request_writes_into_out_and_shows_its_progress_and_default_poses(checkpointed_run, tmp_path):
    """sample.py with task flags (no --requests) writes OUT/grid.png etc. (no OUT/000_<task>/), names the
    poses it chose and shows a sampling bar that says its first batch compiles."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "sample.py", "--workdir", str(checkpointed_run), "--task", "interpolate", "--frames", "2",
         "--num_steps", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"grid.png", "samples.json", "sample_000.png", "sample_001.png", "animation.gif"} <= {
        path.name for path in out.iterdir()}
    assert not any(path.is_dir() for path in out.iterdir())
    assert "000_interpolate: start_smpl = example:0:source (test example 0's source pose" in result.stdout
    assert "sample (compiling the sampler)" in result.stderr and "load the model: " in result.stdout
    assert result.stdout.strip().splitlines()[-1] == str(out)
