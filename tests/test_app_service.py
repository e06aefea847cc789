"""The app's request handling without a browser: page values -> requests -> the service.

One loaded tiny run and one compilation: requests of every task with the same sampler settings
must not compile again, bad inputs must raise the sampling package's one-line errors, and the pose gallery
must have poses on a machine without the shared samples or a dataset.
"""
import jax
import numpy as np
import pytest

from upgpt_jax import sampling
from upgpt_jax.app import requests
from upgpt_jax.app.poses import pose_gallery, thumbnails
from upgpt_jax.app.service import SamplingService, error_line


@pytest.fixture(scope="module")
def service(checkpointed_run):
    return SamplingService(sampling.load_from_workdir(checkpointed_run), {"num_steps": 2, "batch_size": 4})


def test_requests_of_one_setting_compile_once_and_match_the_pipeline(service):
    """After the app's warm-up (one generate request; it compiles the editor too), requests of
    every task with the same settings compile nothing."""
    service.warm_up(requests.generate_request("a person", "example:1", [], 1, 0))
    assert service.warm_up_error is None and service.is_compiled(service.defaults, "edit")
    compiles = []

    def listener(event: str, seconds: float, **kwargs) -> None:
        if "backend_compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        first = service.run(requests.generate_request("a person", "example:1", ["top=text:red"], 1, 5))
        edit = service.run(requests.edit_request(2, "top", "a red top", None, None, 3))
        frames = service.run(requests.interpolate_request(2, "example:1", "example:2", 6, "slerp", 0))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == [] and service.is_compiled(service.defaults)
    assert [len(result.images) for result in (first, edit, frames)] == [1, 2, 6]  # 6 frames: two batches of 4
    assert edit.job.labels[0] == "unedited" and edit.samples()[1][1].startswith("edited")
    assert frames.mask().shape[1] > first.mask().shape[1]  # a strip of the frames' distinct masks
    np.testing.assert_array_equal(first.mask()[..., 0] > 0, first.job.people[0].mask)
    # The same request through the sampling package's batch API (sample.py's path) gives the same pixels.
    job = sampling.plan_requests(service.loaded.config, [edit.job.request])[0]
    np.testing.assert_array_equal(sampling.sample_jobs(service._sampler(service.defaults), [job])[0], edit.images)


def test_bad_inputs_raise_one_line_errors_naming_the_input(service, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros(80, np.float32))
    cases = [
        (requests.generate_request("a person", str(tmp_path / "short.npy"), [], 1, 0), "SMPL must be 85 finite numbers"),
        (requests.edit_request(0, "sleeve", "red", None, None, 0), "unknown style part 'sleeve'"),
        (requests.generate_request("a person", "example:1", ["top=example:x"], 1, 0), "'example:x' is not example:K"),
    ]
    for request, expected in cases:
        with pytest.raises(sampling.ConditionError) as error:
            service.run(request)
        assert expected in error_line(error.value) and "\n" not in error_line(error.value)
    with pytest.raises(sampling.ConditionError, match="seed: expected a whole number"):
        requests.generate_request("a person", "example:1", [], 1, None)
    with pytest.raises(sampling.ConditionError, match="guidance text: expected a number"):
        requests.real_number(None, "guidance text")
    with pytest.raises(sampling.ConditionError, match="pick a pose"):
        requests.pose_spec(None, None, {}, "pose")


def test_pose_gallery_has_poses_without_shared_samples_or_a_dataset(service, tiny_config, tmp_path):
    no_dataset = tiny_config.copy_and_resolve_references()
    no_dataset.data.dataset, no_dataset.data.data_dir = "deepfashion", ""
    synthetic = pose_gallery(sampling.TaskContext(no_dataset), str(tmp_path))
    assert list(synthetic) == ["synthetic pose 0", "synthetic pose 1", "synthetic pose 2"]
    np.save(tmp_path / "mine.npy", np.asarray(synthetic["synthetic pose 1"], np.float32))
    gallery = pose_gallery(service.context, str(tmp_path), num_examples=2)
    assert list(gallery) == [f"{tmp_path.name}/mine.npy", "test example 0", "test example 1"]
    images = thumbnails(service.context, gallery)
    assert len(images) == 3 and all(image.any() for image, _ in images)
