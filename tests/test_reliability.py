"""Faults and bad inputs (issue 18): what a divergence, a damaged checkpoint, a second job, a failed
save or a bad setting costs, and that each bad input ends in one line naming what was expected.

One small run with checkpoints at steps 1 and 2 (`two_checkpoints`) is copied by every test that
needs a run; train.py subprocesses load its compiled step from the shared compilation cache.
"""
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from test_train import (  # noqa: F401 (shared_compilation_cache: the module's autouse XLA cache)
    REPO, read_metrics, shared_compilation_cache, small_config, subprocess_env, write_config_file)
from upgpt_jax.sampling import ConditionError, plan_requests
from upgpt_jax.rundir.layout import CHECKPOINT_DIR, METRICS_FILE
from upgpt_jax.rundir.shardings import with_shardings
from upgpt_jax.train import trainer
from upgpt_jax.train.build import build
from upgpt_jax.train.checkpointing import Checkpointer, CheckpointRestoreError, CheckpointSaveError
from upgpt_jax.train.config_checks import ConfigError
from upgpt_jax.train.metrics_log import MetricsLog
from upgpt_jax.train.state import TrainState, apply_gradients
from upgpt_jax.train.workdir_hold import HOLD_FILE, STALE_S, WorkdirBusy, WorkdirHold, hold_workdir


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, shared_compilation_cache):
    workdir = tmp_path_factory.mktemp("reliability") / "run"
    result = trainer.train(small_config(num_steps=2, checkpoint_every=1), workdir)
    assert result.stop_reason == "done" and result.last_checkpoint == 2
    return workdir


def copy_run(source, tmp_path):
    return pathlib.Path(shutil.copytree(source, tmp_path / "run"))


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def run_cli(*args, cache=None, timeout=240):
    """`python *args` from the repository root (with the shared XLA cache when `cache` is given)."""
    env = subprocess_env(cache) if cache else {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# --- 1. divergence: a finite loss with an update that blows the weights up ----------------------


def toy_state(optimizer):
    params = {"w": jnp.ones((4, 4))}
    return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params), ema_params=params,
                      frozen_params={}, rng=jax.random.PRNGKey(0), skipped=jnp.int32(0))


def test_an_update_far_larger_than_the_weights_is_skipped_like_a_non_finite_one():
    grads, loss = {"w": jnp.full((4, 4), 0.1)}, jnp.float32(1.0)  # finite loss and gradient
    for rate, applied in ((1e12, False), (1e-3, True)):
        optimizer = optax.adam(rate)
        state = toy_state(optimizer)
        new, ok, _ = apply_gradients(state, grads, loss, jax.random.PRNGKey(1), optimizer, ema_decay=0.9)
        assert bool(ok) == applied and int(new.skipped) == (0 if applied else 1) and int(new.step) == 1
        moved = not np.array_equal(np.asarray(new.params["w"]), np.ones((4, 4)))
        assert moved == applied


def test_a_divergence_names_and_resumes_from_a_checkpoint_with_sane_weights(two_checkpoints, tmp_path, capsys):
    workdir = copy_run(two_checkpoints, tmp_path)
    exploding = small_config(num_steps=10, checkpoint_every=1, max_consecutive_nan=2)
    exploding.optim.learning_rate = 1e12  # loss and gradients stay finite; only the update explodes
    result = trainer.train(exploding, workdir)
    assert result.stop_reason == "diverged" and result.last_checkpoint == 2
    assert "the last good checkpoint is step 2" in capsys.readouterr().out
    assert max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(jax.device_get(result.state.params))) < 100

    resumed = trainer.train(small_config(num_steps=3, checkpoint_every=1), workdir)
    assert resumed.stop_reason == "done"
    assert "first step 3 done" in capsys.readouterr().out  # from step 2, the last good one
    rows = read_metrics(workdir)
    assert [row["step"] for row in rows] == [1, 2, 3] and np.isfinite(rows[-1]["loss"])


# --- 2. a damaged newest checkpoint ------------------------------------------------------------


def damage(checkpoints, how):
    """Damage the run's checkpoints; returns (the step set aside, the step resumed from)."""
    if how == "truncated_data_file":
        data = max((path for path in (checkpoints / "2" / "state").rglob("*") if path.is_file()),
                   key=lambda path: path.stat().st_size)
        os.truncate(data, data.stat().st_size // 2)
        return 2, 1
    if how == "deleted_manifest":
        (checkpoints / "2" / "state" / "manifest.ocdbt").unlink()
        return 2, 1
    (checkpoints / "3").mkdir()  # a step folder without state/
    return 3, 2


@pytest.mark.parametrize("how", ["truncated_data_file", "deleted_manifest", "step_without_state"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(two_checkpoints, tmp_path, capsys,
                                                                                  how):
    workdir = copy_run(two_checkpoints, tmp_path)
    checkpoints = workdir / CHECKPOINT_DIR
    bad, good = damage(checkpoints, how)
    result = trainer.train(small_config(num_steps=3, checkpoint_every=1), workdir)
    out = capsys.readouterr().out
    assert result.stop_reason == "done"
    warnings = [line for line in out.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint {bad} is damaged"), out
    assert f"first step {good + 1} done" in out
    assert [path.name.split(".")[0] for path in checkpoints.glob("*.set-aside-*")] == [str(bad)]


def test_when_no_checkpoint_restores_nothing_is_set_aside(two_checkpoints, tmp_path):
    """A config that no longer fits the run fails every restore: an error, the checkpoints stay."""
    workdir = copy_run(two_checkpoints, tmp_path)
    parts = build(small_config())
    target = with_shardings(parts.abstract, parts.shardings)
    leaves, tree = jax.tree.flatten(target)
    leaves[-1] = jax.ShapeDtypeStruct((3, 3), leaves[-1].dtype, sharding=leaves[-1].sharding)
    checkpointer = Checkpointer(workdir / CHECKPOINT_DIR, keep=3)
    with pytest.raises(CheckpointRestoreError, match="no checkpoint in .* restores"):
        checkpointer.restore_latest(jax.tree.unflatten(tree, leaves))
    checkpointer.close()
    assert sorted(path.name for path in (workdir / CHECKPOINT_DIR).iterdir()) == ["1", "2"]


# --- 4. one job per workdir --------------------------------------------------------------------


def test_a_second_job_on_a_held_workdir_is_refused_in_one_line(two_checkpoints, tmp_path, shared_compilation_cache):
    workdir = copy_run(two_checkpoints, tmp_path)
    metrics = (workdir / METRICS_FILE).read_text()
    with hold_workdir(workdir):  # this test process is the live first job
        run = run_cli("train.py", f"--config={write_config_file(tmp_path)}", f"--workdir={workdir}",
                      "--config.train.num_steps=5", cache=shared_compilation_cache)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert len(error_lines(run.stderr)) == 1
    assert "is in use by job" in run.stderr and f"pid {os.getpid()} on {socket.gethostname()}" in run.stderr
    assert (workdir / METRICS_FILE).read_text() == metrics  # its rows untouched
    assert not (workdir / HOLD_FILE).exists()  # given back


def write_hold(path, **fields):
    record = {"host": socket.gethostname(), "pid": os.getpid(), "job": "other", "heartbeat": time.time(), **fields}
    path.write_text(json.dumps(record))


def test_a_stale_hold_is_taken_over_and_a_live_one_is_not(tmp_path, capsys):
    path = tmp_path / HOLD_FILE
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    for fields, live in (({}, True), ({"host": "elsewhere"}, True), ({"pid": dead_pid}, False),
                         ({"host": "elsewhere", "heartbeat": time.time() - STALE_S - 5}, False)):
        write_hold(path, **fields)
        hold = WorkdirHold(path)
        if live:
            with pytest.raises(WorkdirBusy, match="is in use by job other"):
                hold.acquire()
            continue
        hold.acquire()
        assert "warning: taking over the hold" in capsys.readouterr().out
        assert json.loads(path.read_text())["job"] == hold.record["job"]
        hold.release()
        assert not path.exists()
    path.write_text('{"host": "cut sh')  # a hold file written halfway counts as none
    hold = WorkdirHold(path)
    hold.acquire()
    assert json.loads(path.read_text())["job"] == hold.record["job"]
    hold.release()


# --- 5. a failed save ---------------------------------------------------------------------------

REFUSING_SAVES = """
import runpy, sys
from orbax.checkpoint._src.path import atomicity

async def refuse(path, *args, **kwargs):  # what a read-only checkpoints/ does to orbax's background save
    raise PermissionError(13, "Permission denied", str(path))

atomicity.async_path.mkdir = refuse
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_failed_save_exits_non_zero_in_one_line_naming_the_lost_steps(two_checkpoints, tmp_path,
                                                                         shared_compilation_cache):
    workdir = copy_run(two_checkpoints, tmp_path)
    run = run_cli("-c", REFUSING_SAVES, "train.py", f"--config={write_config_file(tmp_path)}", f"--workdir={workdir}",
                  "--config.train.num_steps=4", "--config.train.checkpoint_every=1", cache=shared_compilation_cache)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    (line,) = error_lines(run.stderr)
    assert re.search(r"PermissionError.*; the last checkpoint is step 2: the 2 steps since it are lost$", line), line


def test_an_unwritable_checkpoint_folder_is_refused_before_training(tmp_path):
    (tmp_path / CHECKPOINT_DIR).write_text("a file where the folder should be")
    with pytest.raises(CheckpointSaveError, match="cannot write checkpoints to .*; nothing was trained"):
        trainer.train(small_config(), tmp_path)
    assert not (tmp_path / METRICS_FILE).exists() and not (tmp_path / HOLD_FILE).exists()


# --- 6. bad settings and inputs: refused first, in one line -------------------------------------


@pytest.mark.parametrize("section, field, value, expected", [
    ("train", "checkpoint_every", 0, "config.train.checkpoint_every: expected an integer >= 1, got 0"),
    ("train", "batch_size", 0, "config.train.batch_size: expected an integer >= 1, got 0"),
    ("train", "batch_size", -1, "config.train.batch_size: expected an integer >= 1, got -1"),
    ("optim", "learning_rate", -1.0, "config.optim.learning_rate: expected a number > 0, got -1.0"),
])
def test_bad_settings_are_refused_before_the_workdir_is_made(tmp_path, section, field, value, expected):
    config = small_config()
    config[section][field] = value
    with pytest.raises(ConfigError, match=re.escape(expected)):
        trainer.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_unknown_config_field_is_one_line_listing_the_fields(tmp_path):
    run = run_cli("train.py", "--config=configs/synthetic_tiny.py", f"--workdir={tmp_path / 'run'}",
                  "--config.train.chekpoint_every=5", timeout=120)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
    assert "config.train has no field 'chekpoint_every'; did you mean checkpoint_every" in run.stderr
    assert "keep_checkpoints" in run.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("request_, message", [
    ({"task": "generate", "seed": "abc"}, "'seed' must be an integer, got 'abc'"),
    ({"task": "generate", "num": 0}, "'num' must be >= 1, got 0"),
    ({"task": "pose_transfer", "num": -3}, "'num' must be >= 1, got -3"),
    ({"task": "interpolate", "frames": 0}, "'frames' must be >= 2, got 0"),
])
def test_bad_request_values_are_refused_by_name(tiny_config, request_, message):
    with pytest.raises(ConditionError, match=re.escape(message)):
        plan_requests(tiny_config, [request_])


@pytest.mark.parametrize("lines, out, message", [
    (['{"task": "generate", "num": 1}', '{"task": '], "out", "requests.jsonl:2: not JSON"),
    (['{"task": "generate", "num": 1, "example": 0}'], "blocker/out", "cannot be written"),
    (['{"task": "generate", "num": 1, "name": "../escaped"}'], "out", "it names the output folder"),
])
def test_sample_refuses_bad_requests_and_outputs_before_any_compute(checkpointed_run, tmp_path, lines, out, message):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    (tmp_path / "blocker").write_text("a file, so nothing can be written under it")
    run = run_cli("sample.py", f"--workdir={checkpointed_run}", f"--requests={requests}", f"--out={tmp_path / out}",
                  timeout=180)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    (line,) = error_lines(run.stderr)
    assert message in line and run.stderr.strip().endswith(line)
    assert not (tmp_path / "escaped").exists()


def test_prepare_reports_a_corrupt_image_and_missing_captions_in_one_line(tmp_path, capsys):
    from deepfashion_fixture import make_manual_dir, sample_paths
    from upgpt_jax.data.prepare import main

    manual_dir = make_manual_dir(tmp_path / "manual")
    (manual_dir / "img_256" / sample_paths()[0]).write_bytes(b"not a jpeg")
    arguments = ["--dataset", "deepfashion_upgpt", "--manual_dir", str(manual_dir)]
    with pytest.raises(SystemExit) as exited:
        main(arguments + ["--data_dir", str(tmp_path / "a")])
    err = capsys.readouterr().err  # (TFDS's progress bars above the error)
    (line,) = error_lines(err)
    assert exited.value.code == 2 and "Traceback" not in err and err.strip().endswith(line)
    assert "cannot read image" in line and "--skip_bad skips such pairs" in line

    (manual_dir / "captions.json").unlink()
    with pytest.raises(SystemExit):
        main(arguments + ["--data_dir", str(tmp_path / "b")])
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert "Traceback" not in err and "captions.json: cannot read the captions file" in line


# --- 7. metrics.jsonl ---------------------------------------------------------------------------


def reject_constant(name):
    raise ValueError(f"bare {name} in metrics.jsonl")


def test_metrics_rows_are_strict_json_and_the_resume_rewrite_is_atomic(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path, resume_step=0)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": float("nan") if step == 2 else 0.5, "grad_norm": float("inf"), "lr": 0.1})
    log.close()
    path = tmp_path / METRICS_FILE
    rows = [json.loads(line, parse_constant=reject_constant) for line in path.read_text().splitlines()]
    assert [(row["loss"], row["grad_norm"]) for row in rows] == [(0.5, None), (None, None), (0.5, None)]

    path.write_text(path.read_text() + '{"step": 4, "lo')  # a row cut short by a crash
    before = path.read_text()

    def crash(*args):
        raise OSError("killed during the rewrite")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed during the rewrite"):
        MetricsLog(tmp_path, resume_step=2)
    assert path.read_text() == before  # the old rows, whole
    monkeypatch.undo()
    MetricsLog(tmp_path, resume_step=2).close()
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2]
