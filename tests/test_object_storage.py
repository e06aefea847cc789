"""gs:// wherever a path is taken, against a local GCS emulator (PyPI gcp-storage-emulator).

One emulator serves the session (in memory, bucket "bucket", a free port on 127.0.0.1). Each
test that uses it points the three GCS clients at it for its own duration only (monkeypatch), as
they read their variable when they connect, not at import: gcsfs (etils.epath's gs://)
STORAGE_EMULATOR_HOST at every request, tensorstore (orbax's arrays) TENSORSTORE_GCS_HTTP_URL when it
opens a store, array_record's reader (google-cloud-cpp) CLOUD_STORAGE_EMULATOR_ENDPOINT per file.
The train test takes about 2 minutes on a busy 2-core host, nearly all of it compiling the small
model's first step, as any training test does (shared in one process with tests/test_train.py).
"""
import json
import os
import signal
import socket
import sys
import types

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

# TensorBoard's TensorFlow-free reader (as tests/test_summary.py uses it) reads back the event files.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

from conftest import jax_compilation_cache  # noqa: E402
from test_train import assert_trees_equal, host_copy, small_config  # noqa: E402
from upgpt_jax import sampling, storage  # noqa: E402
from upgpt_jax.rundir.layout import CHECKPOINT_DIR, METRICS_FILE, TENSORBOARD_DIR  # noqa: E402
from upgpt_jax.train import trainer  # noqa: E402

BUCKET = "gs://bucket"
EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT")


def with_generation_preconditions():
    """Make the emulator honour ifGenerationMatch / ifGenerationNotMatch on object reads and uploads and
    send x-goog-generation with reads, as GCS does. gcp-storage-emulator 2026.7.19 ignores both and
    answers a read with ifGenerationNotMatch=<current> with 200 and no generation, which tensorstore's
    OCDBT (orbax's checkpoint format) rejects ("Malformed StorageGeneration") once a save re-reads its
    manifest (trees of more than a few dozen arrays). The server handles one request at a time, so
    the check and the write cannot interleave with another request."""
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def conditional(handler, target):
        def handle(request, response, storage, *args, **kwargs):
            bucket, name = target(request)
            if name is not None:
                try:
                    current = int(storage.get_file_obj(bucket, name)["generation"])
                except NotFound:
                    current = None
                match, not_match = request.query.get("ifGenerationMatch"), request.query.get("ifGenerationNotMatch")
                if match and int(match[0]) != (current or 0):  # 0: "only if absent"
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    return None
                if current is not None and request.method == "GET":
                    response["x-goog-generation"] = str(current)
                if not_match and current is not None and int(not_match[0]) == current:
                    response.status = HTTPStatus.NOT_MODIFIED if request.method == "GET" else \
                        HTTPStatus.PRECONDITION_FAILED
                    return None
            return handler(request, response, storage, *args, **kwargs)

        handle.conditional = True
        return handle

    def an_object(request):
        return request.params["bucket_name"], request.params["object_id"]

    def an_upload(request):
        return request.params["bucket_name"], (request.query.get("name") or [None])[0]

    if getattr(objects.get, "conditional", False):
        return
    replaced = {}
    for name, target in (("get", an_object), ("download", an_object), ("insert", an_upload)):
        replaced[getattr(objects, name)] = conditional(getattr(objects, name), target)
        setattr(objects, name, replaced[getattr(objects, name)])  # objects.get calls download through it
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            handlers[method] = replaced.get(handler, handler)


@pytest.fixture(scope="session")
def gcs_emulator():
    """The emulator's URL; the server runs in a thread of this process until the session ends."""
    from gcp_storage_emulator.server import create_server

    with_generation_preconditions()
    if "gcsfs" not in sys.modules:
        # gcsfs picks its class at import: the default one asks Google's storage-control API (gRPC, not
        # emulated) for every bucket's layout, and only logs a warning each time it cannot.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            import gcsfs  # noqa: F401
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
    server._api.daemon = True  # a failed session must not hang on the server thread
    server.start()
    # Clients that drop a connection early make the server print a BrokenPipe traceback: not a failure.
    server._api._httpd.handle_error = lambda request, address: None
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    """The emulator for this test only: the clients' environment, and the bucket's JAX compilation cache."""
    for name in EMULATOR_VARIABLES:
        monkeypatch.setenv(name, gcs_emulator)
    with jax_compilation_cache(f"{BUCKET}/jax_cache"):  # JAX opens it through etils.epath
        yield gcs_emulator


def bucket_metrics(workdir):
    return [json.loads(line) for line in storage.path(f"{workdir}/{METRICS_FILE}").read_text().splitlines()]


def preempted_at(step_count):
    """A stand-in for trainer.training_pipeline whose pipeline sends this process SIGTERM while it
    serves batch `step_count` (the preemption notice train.py gets), so that step saves and ends the run."""
    real = trainer.training_pipeline

    def make(config):
        pipeline_ = real(config)

        class Preempting(type(pipeline_)):
            served = 0

            def __next__(self):
                batch = super().__next__()
                Preempting.served += 1
                if Preempting.served == step_count:
                    os.kill(os.getpid(), signal.SIGTERM)  # PreemptionSignal records it (main thread)
                return batch

        pipeline_.__class__ = Preempting
        return pipeline_

    return make


def test_train_preempt_resume_and_sample_in_a_bucket(gcs, tmp_path, monkeypatch):
    run = f"{BUCKET}/run"
    # test_train's model and settings (loop fields aside): one process compiles them once for both modules.
    config = small_config(num_steps=5, checkpoint_every=100)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "training_pipeline", preempted_at(3))
        first = trainer.train(config, run)
    assert (first.stop_reason, int(first.state.step), first.last_checkpoint) == ("preempted", 3, 3)
    assert (storage.path(run) / CHECKPOINT_DIR / "3").is_dir()
    assert [row["step"] for row in bucket_metrics(run)] == [1, 2, 3]

    resumed = trainer.train(config, run)  # the same command again: restores step 3 from the bucket
    assert (resumed.stop_reason, int(resumed.state.step), resumed.last_checkpoint) == ("done", 5, 5)
    straight = trainer.train(config, tmp_path / "straight")  # the uninterrupted run, on local disk
    fields = ("step", "loss", "lr", "grad_norm", "skipped")
    got = [{key: row[key] for key in fields} for row in bucket_metrics(run)]
    assert got == [{key: row[key] for key in fields} for row in
                   map(json.loads, (tmp_path / "straight" / METRICS_FILE).read_text().splitlines())]
    assert [row["step"] for row in got] == [1, 2, 3, 4, 5]
    assert_trees_equal(host_copy(resumed.state), host_copy(straight.state))

    # TensorBoard: one event file per run, read back from the bucket by TensorBoard's reader.
    events = tmp_path / "events"
    events.mkdir()
    files = list((storage.path(run) / TENSORBOARD_DIR).iterdir())
    assert len(files) == 2
    for file in files:
        (events / file.name).write_bytes(file.read_bytes())
    accumulator = event_accumulator.EventAccumulator(str(events), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("loss")] == [1, 2, 3, 4, 5]

    # sample.py's code path: the run's config, checked requests, the newest checkpoint, outputs.
    out = f"{BUCKET}/out"
    request = {"task": "generate", "example": 0, "num": 1, "name": "gen"}
    jobs = sampling.plan_requests(sampling.run_config(run)[0], [request])
    loaded = sampling.load_from_workdir(run)
    assert loaded.source == {"workdir": run, "step": 5, "weights": "ema"}
    settings = sampling.SamplingSettings.from_config(loaded.config.sampling, num_steps=2, batch_size=1)
    folders = sampling.run_jobs(loaded, jobs, out, settings, progress=False)
    assert [str(folder) for folder in folders] == [f"{out}/gen"]
    written = {path.name: path for path in storage.path(f"{out}/gen").iterdir()}
    assert {"sample_000.png", "grid.png", "samples.json"} <= set(written)
    record = json.loads(written["samples.json"].read_text())
    assert record["checkpoint"]["workdir"] == run and record["files"] == ["sample_000.png"]
    with written["sample_000.png"].open("rb") as file:
        assert Image.open(file).size == (48, 64)

    # The training run's preview grids (train.sample_every) go to its workdir's samples/.
    from upgpt_jax.train.previews import SamplePreviews

    preview_config = loaded.config.copy_and_resolve_references()
    preview_config.train.num_previews = 1
    preview_config.sampling.update(num_steps=2, batch_size=1)  # as `settings`: the compiled sampler is cached
    SamplePreviews(preview_config, loaded.model, loaded.clip, loaded.clip_params, loaded.mesh, run)(5, loaded.params)
    assert [path.name for path in (storage.path(run) / "samples").iterdir()] == ["step_0000005.png"]

    # train.init_vae_from may name the bucket run: its VAE is the checkpoint's.
    from upgpt_jax.rundir.vae import load_vae

    vae = load_vae(run, like=jax.device_get(loaded.params["vae"]))
    assert_trees_equal(vae, host_copy(loaded.params["vae"]))
    assert list(storage.path(f"{BUCKET}/jax_cache").iterdir())  # the compilation cache lives in the bucket


def test_features_data_params_and_reports_in_a_bucket(gcs, tmp_path):
    from upgpt_jax.weights.params_io import load_params, save_params
    from upgpt_jax.data.features import FeatureSource
    from upgpt_jax.data.prepare import main as prepare
    from upgpt_jax.eval.protocols import EvalResult
    from upgpt_jax.eval.report import write_report
    from upgpt_jax.train.data import SyntheticPairs, training_pipeline, training_source
    from upgpt_jax.train.precompute import precompute

    # Precomputed features: shards written locally and uploaded, read back by array_record from gs://.
    config = small_config(num_steps=1)
    config.data.num_examples = 10
    local, remote = precompute(config, tmp_path / "features"), precompute(config, f"{BUCKET}/features")
    assert remote["count"] == local["count"] == 10 and remote["shard_bytes"] == local["shard_bytes"]
    from_bucket, from_disk = FeatureSource(f"{BUCKET}/features"), FeatureSource(tmp_path / "features")
    for index in (0, 9):
        assert_trees_equal(from_bucket[index], from_disk[index])
    batches = []
    for folder in (f"{BUCKET}/features", str(tmp_path / "features")):  # what train.py reads (signature checked)
        config.data.features_dir = folder
        with training_pipeline(config) as pipeline_:
            batches.append(next(pipeline_))
    assert_trees_equal(*batches)

    # A prepared TFDS folder (built locally, uploaded) is read from the bucket by tfds' ArrayRecord source.
    prepared = prepare(["--dataset", "synthetic_people", "--data_dir", f"{BUCKET}/tfds", "--num_examples", "2",
                        "--workers", "1"])
    assert str(prepared).startswith(f"{BUCKET}/tfds/synthetic_people/") and (prepared / "dataset_info.json").exists()
    source = training_source(ConfigDict(dict(data_dir=f"{BUCKET}/tfds", dataset="synthetic_people")), config.model)
    rendered = SyntheticPairs(2, config.model.image_size, config.model.clip.image_size)
    assert len(source) == 2
    assert source[1]["text"].decode() == rendered[1]["text"]
    np.testing.assert_array_equal(source[1]["smpl"], rendered[1]["smpl"])

    # Converted weights (sample.py --params) and an evaluation report (eval.py --out).
    params = {"vae": {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}}
    save_params(f"{BUCKET}/params", params, {"source": "test"})
    restored, metadata = load_params(f"{BUCKET}/params")
    assert_trees_equal(restored, params)
    assert metadata == {"source": "test"}
    image = np.zeros((8, 6, 3), np.uint8)
    written = write_report(EvalResult(protocol="p", metrics={"m": 1.0}, per_example={"m": [1.0]},
                                      worst=[("worst", [image, image])], details={}), f"{BUCKET}/eval")
    assert json.loads(written["json"].read_text())["metrics"] == {"m": 1.0}
    assert written["worst"].exists() and str(written["worst"]) == f"{BUCKET}/eval/worst.png"


def test_request_names_never_leave_the_output_folder(tiny_config):
    for name in ("../x", "a/b", "..", ".", "a\\b"):
        with pytest.raises(sampling.ConditionError, match="one folder name"):
            sampling.plan_requests(tiny_config, [{"task": "generate", "example": 0, "name": name}])
    assert [job.name for job in sampling.plan_requests(tiny_config, [{"task": "generate", "example": 0,
                                                                      "name": "a..b"}])] == ["a..b"]


def test_append_file_on_a_bucket_uploads_whole_objects(gcs):
    log = storage.AppendFile(f"{BUCKET}/logs/a.log", upload_every=3600.0)
    log.write(b"one\n")  # the first write is uploaded at once
    log.write(b"two\n")  # later ones wait for upload_every, flush() or close()
    assert storage.path(f"{BUCKET}/logs/a.log").read_bytes() == b"one\n"
    log.close()
    assert storage.path(f"{BUCKET}/logs/a.log").read_bytes() == b"one\ntwo\n"
    with pytest.raises(FileExistsError):
        storage.AppendFile(f"{BUCKET}/logs/a.log", exclusive=True)
    appended = storage.AppendFile(f"{BUCKET}/logs/a.log")  # appending downloads the object first
    appended.write(b"three\n")
    appended.close()
    assert storage.path(f"{BUCKET}/logs/a.log").read_bytes() == b"one\ntwo\nthree\n"
    truncated = storage.AppendFile(f"{BUCKET}/logs/a.log", initial=b"one\n")
    assert storage.path(f"{BUCKET}/logs/a.log").read_bytes() == b"one\n"  # at once, before any write
    truncated.close()


def test_clip_folder_written_to_and_read_from_a_bucket(gcs, tiny_config):
    """clip_pretrain's folder writer and load_clip take gs:// (the main job's CLIP, kept in a bucket)."""
    from upgpt_jax.models.clip import clip_from_config, load_clip
    from upgpt_jax.train.clip_pretrain import REPORT_FILE, write_clip_folder

    clip, params = clip_from_config(tiny_config.model.clip, seed=3)
    write_clip_folder(f"{BUCKET}/clip", clip.config, params, np.float32(2.5), {"steps": 0})
    assert json.loads(storage.path(f"{BUCKET}/clip/{REPORT_FILE}").read_text()) == {"steps": 0}
    _, loaded = load_clip(f"{BUCKET}/clip")
    assert_trees_equal(loaded, params)
    with pytest.raises(FileNotFoundError, match="gs://bucket/no_clip holds no files"):
        load_clip(f"{BUCKET}/no_clip")
