"""Multi-process training: train.py over 2 processes x 4 CPU devices equals 1 process x 8 devices,
across a preemption.

The 2-process job starts first; SIGTERM reaches one of its processes (not process 0, which logs),
both must save the step they reached and exit cleanly; re-running the same command resumes. A
1-process x 8-device job of the same small model (test_train.small_config) on the same mesh
(data=2 x fsdp=4) trains to the same step uninterrupted, and both must log the same losses and save
the same checkpoint. In the 2-process job each process loads half of every batch, collectives cross
processes (gloo over TCP) and orbax writes one checkpoint from both.
"""
import os
import pathlib
import socket
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_train import read_metrics, write_config_file
from upgpt_jax.distributed import initialize
from upgpt_jax.rundir.layout import CHECKPOINT_DIR, METRICS_FILE

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
RESUMED_STEPS = 2  # steps the 2-process job trains after its preemption


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(config_file, workdir, devices_per_process, cache_dir, num_steps, *distributed_flags):
    """train.py to `num_steps` on `devices_per_process` fake CPU devices (stdout, stderr to files)."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
           "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO / "train.py"), f"--config={config_file}", f"--workdir={workdir}",
               f"--config.train.num_steps={num_steps}", "--config.train.log_every=1",
               "--config.train.checkpoint_every=100000",
               "--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.mesh.tensor=1", *distributed_flags]
    name = f"{pathlib.Path(workdir).name}{num_steps}" + "".join(flag.split("=")[-1] for flag in distributed_flags[-1:])
    logs = [open(pathlib.Path(workdir).parent / f"{name}.{stream}", "w+") for stream in ("out", "err")]
    return subprocess.Popen(command, env=env, cwd=workdir.parent, stdout=logs[0], stderr=logs[1], text=True), logs


def launch_two_processes(config_file, workdir, cache_dir, num_steps):
    coordinator = f"--coordinator_address=127.0.0.1:{free_port()}"
    return [launch(config_file, workdir, 4, cache_dir, num_steps, coordinator, "--num_processes=2",
                   f"--process_id={index}") for index in range(2)]


def finish(jobs):
    """Wait for every job; on a failure or time-out kill the rest and show every job's output."""
    failures = []
    for process, _ in jobs:
        try:
            if process.wait(timeout=TIMEOUT_S) != 0:
                failures.append(f"exit code {process.returncode}")
        except subprocess.TimeoutExpired:
            failures.append(f"no exit within {TIMEOUT_S} s")
            break
    outputs = []
    for process, logs in jobs:
        if process.poll() is None:
            process.kill()
            process.wait()
        for log in logs:
            log.seek(0)
            outputs.append(f"--- {log.name} ---\n{log.read()[-4000:]}")
            log.close()
    assert not failures, "\n".join(failures + outputs)
    return outputs


def restore_state(checkpoint_dir):
    """The newest checkpoint's TrainState as a dict of host arrays (read onto this process's device)."""
    with ocp.CheckpointManager(checkpoint_dir) as manager:
        path = pathlib.Path(checkpoint_dir) / str(manager.latest_step()) / "state"
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                          getattr(metadata, "item_metadata", metadata))
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def test_two_processes_train_like_one_across_a_preemption(tmp_path):
    config_file = write_config_file(tmp_path)
    single, multi = tmp_path / "single", tmp_path / "multi"
    jobs = launch_two_processes(config_file, multi, tmp_path / "cache_multi", 100000)
    metrics = multi / METRICS_FILE
    deadline = time.monotonic() + TIMEOUT_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        if any(process.poll() is not None for process, _ in jobs) or time.monotonic() > deadline:
            finish(jobs)  # shows why
            pytest.fail("the 2-process job stopped or did not reach step 2 in time")
        time.sleep(0.2)
    jobs[1][0].send_signal(signal.SIGTERM)  # one process is preempted: both must save and stop
    outputs = finish(jobs)
    preempted_at = read_metrics(multi)[-1]["step"]
    stdouts = [text for text in outputs if ".out ---" in text]
    stopped = f"preempted at step {preempted_at}; last checkpoint: {preempted_at}"
    assert [stopped in text for text in stdouts] == [True, False], "only process 0 reports:\n" + "\n".join(outputs)

    num_steps = preempted_at + RESUMED_STEPS
    jobs = [launch(config_file, single, 8, tmp_path / "cache_single", num_steps)]
    jobs += launch_two_processes(config_file, multi, tmp_path / "cache_multi", num_steps)
    outputs = finish(jobs)
    done = f"done at step {num_steps}; last checkpoint: {num_steps}"
    stdouts = [text for text in outputs if ".out ---" in text]
    assert [done in text for text in stdouts] == [True, True, False], "only process 0 reports:\n" + "\n".join(outputs)

    expected, got = read_metrics(single), read_metrics(multi)
    assert [row["step"] for row in got] == [row["step"] for row in expected] == list(range(1, num_steps + 1))
    for row, reference in zip(got, expected):
        for field in ("loss", "grad_norm", "lr"):
            assert row[field] == pytest.approx(reference[field], rel=1e-5), (field, row, reference)

    expected_state = restore_state(single / CHECKPOINT_DIR)
    got_state = restore_state(multi / CHECKPOINT_DIR)
    assert int(got_state["step"]) == int(expected_state["step"]) == num_steps
    assert jax.tree.structure(got_state) == jax.tree.structure(expected_state)
    for name in ("params", "ema_params"):  # relative error over the tree (Adam magnifies ulps of tiny leaves)
        pairs = list(zip(jax.tree.leaves(got_state[name]), jax.tree.leaves(expected_state[name])))
        error = max(float(np.max(np.abs(leaf - reference))) for leaf, reference in pairs)
        scale = max(float(np.max(np.abs(reference))) for _, reference in pairs)
        assert error / scale <= 1e-5, (name, error, scale)


@pytest.mark.parametrize("flags, message", [
    (dict(coordinator_address="127.0.0.1:1234"), "missing: num_processes, process_id"),
    (dict(num_processes=2, process_id=0), "missing: coordinator_address"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "host:port"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), r"in \[0, num_processes=2\)"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=0, auto_detect=True), "exclude"),
    (dict(local_device_ids=[0]), "only applies to a multi-process job"),
])
def test_incomplete_or_inconsistent_flags_are_refused_before_anything_starts(flags, message):
    with pytest.raises(ValueError, match=message):
        initialize(**flags)
    assert not jax.distributed.is_initialized()


def test_a_plain_single_process_initialises_nothing():
    initialize()
    assert not jax.distributed.is_initialized()
