"""The trainer's performance instrumentation: `train.profile_steps` traces, no host reads on steps
that do not log, and the logged `tflops_per_device` / `mfu`.

The trace is read back with jax's own XSpace reader (`jax.profiler.ProfileData`). It is also the
witness for "no device-to-host transfer": every host read of a jax.Array (`jax.device_get`,
`float(x)`, `np.asarray(x)`) goes through `ArrayImpl._value`, which JAX annotates as
"np.asarray(jax.Array)" in traces. JAX's transfer guard cannot serve on CPU (its arrays already
live in host memory, so the guard never fires there).
"""
import pathlib

import jax
import numpy as np
import pytest

from upgpt_jax.flops import train_step_flops
from upgpt_jax.hardware import peak_flops_per_device
from upgpt_jax.rundir.layout import CHECKPOINT_DIR, PROFILE_DIR, TENSORBOARD_DIR
from upgpt_jax.train import trainer
from upgpt_jax.train.metrics_window import MetricsWindow
from upgpt_jax.train.profiling import STEP_NAME, parse_profile_steps

from test_train import read_metrics, small_config  # noqa: E402  (tests/ is on sys.path under pytest)

HOST_READS = ("np.asarray(jax.Array)", "ArrayImpl.copy_to_host_async")


def host_events(workdir):
    """The events of the run's one trace on the host plane (all lines), and the trace file."""
    (trace,) = (pathlib.Path(workdir) / PROFILE_DIR).glob("plugins/profile/*/*.xplane.pb")
    data = jax.profiler.ProfileData.from_file(str(trace))
    plane = data.find_plane_with_name("/host:CPU")
    return [event for line in plane.lines for event in line.events]


def test_profile_traces_exactly_the_chosen_steps_and_only_log_steps_read_the_device(tmp_path):
    # Logs at 3 and 6, checkpoint at 6, NaN checks every 10 steps: in the traced steps 2..5 only
    # step 3 may read device values.
    config = small_config(num_steps=6, log_every=3, checkpoint_every=100, max_consecutive_nan=10,
                          profile_steps=(2, 4))
    result = trainer.train(config, tmp_path / "windowed")
    assert result.stop_reason == "done" and int(result.state.step) == 6

    events = host_events(tmp_path / "windowed")
    steps = {dict(event.stats)["step_num"]: event for event in events if event.name == STEP_NAME}
    assert sorted(steps) == [2, 3, 4, 5]
    reads = [event for event in events if event.name in HOST_READS]
    assert reads, "the log step's fetch should show in the trace"
    for event in reads:  # after step 3's dispatch, before step 4's
        assert steps[3].end_ns <= event.start_ns < steps[4].start_ns, (event.name, event.start_ns)

    # The log covers its window: the mean of the finite losses of steps 1-3 and 4-6 of a run that
    # logs every step (the same losses: runs are deterministic on CPU); lr etc. of the logged step.
    windowed = read_metrics(tmp_path / "windowed")
    config = small_config(num_steps=6, log_every=1, checkpoint_every=100)
    trainer.train(config, tmp_path / "every_step")
    every_step = read_metrics(tmp_path / "every_step")
    assert [row["step"] for row in windowed] == [3, 6]
    for row, window in zip(windowed, (every_step[0:3], every_step[3:6])):
        assert row["loss"] == pytest.approx(sum(r["loss"] for r in window) / 3, rel=1e-12)
        assert {k: row[k] for k in ("lr", "grad_norm", "skipped")} == {
            k: window[-1][k] for k in ("lr", "grad_norm", "skipped")}
        assert row["img_per_s"] > 0
        assert "mfu" not in row and "tflops_per_device" not in row  # CPU: no known peak


@pytest.mark.parametrize("value", ["5", "a,b", "3,0", "0,2", (5,), ("a,b",), (1, 2, 3), (2.5, 1)])
def test_bad_profile_steps_are_refused(value):
    with pytest.raises(ValueError, match=r"^config\.train\.profile_steps=.*START,COUNT"):
        parse_profile_steps(value)


def test_profile_steps_forms():
    assert parse_profile_steps(()) is None and parse_profile_steps("") is None and parse_profile_steps(None) is None
    assert parse_profile_steps("10,5") == parse_profile_steps((10, 5)) == parse_profile_steps([10, 5]) == (10, 5)
    assert parse_profile_steps(" 1, 2 ") == (1, 2)


def test_a_bad_profile_steps_stops_train_before_set_up(tmp_path):
    with pytest.raises(ValueError, match="config.train.profile_steps"):
        trainer.train(small_config(profile_steps=(5,)), tmp_path)
    assert not (tmp_path / CHECKPOINT_DIR).exists()


def test_mfu_is_model_flops_times_throughput_over_devices_and_peak(tmp_path):
    peak_tflops = 0.5
    config = small_config(num_steps=3, log_every=1, peak_tflops=peak_tflops)
    trainer.train(config, tmp_path)
    rows = read_metrics(tmp_path)
    assert "mfu" not in rows[0] and rows[0]["img_per_s"] is None  # step 1 compiles: not timed
    flops = train_step_flops(config.model)
    for row in rows[1:]:
        achieved = flops * row["img_per_s"] / jax.device_count()
        assert row["tflops_per_device"] == pytest.approx(achieved / 1e12, rel=1e-9)
        assert row["mfu"] == pytest.approx(achieved / (peak_tflops * 1e12), rel=1e-9)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert [event.step for event in events.Scalars("mfu")] == [2, 3]
    assert events.Scalars("mfu")[-1].value == pytest.approx(rows[-1]["mfu"], rel=1e-6)


def test_peak_comes_from_the_device_kind_unless_overridden():
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("TPU v5 lite") == 197e12
    assert peak_flops_per_device("cpu") is None
    assert peak_flops_per_device("cpu", 2.0) == 2e12
    assert trainer.utilization(4e9, 100.0, 8, 989e12) == pytest.approx(
        {"tflops_per_device": 4e9 * 100 / 8 / 1e12, "mfu": 4e9 * 100 / 8 / 989e12})
    assert trainer.utilization(None, 100.0, 8, 989e12) == {}  # VAE stage: no count
    assert trainer.utilization(4e9, 100.0, 8, None) == {}  # unknown device



def test_the_metrics_window_stops_where_a_per_step_check_would():
    """Random finite/non-finite patterns: fetching only when `fetch_due` finds each divergence at
    the step a check after every step finds it, and the same finite losses, with far fewer reads."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        limit = int(rng.integers(1, 6))
        finite = rng.random(60) > (rng.uniform(0.2, 0.9) if trial % 10 else 0.0)
        losses = rng.random(60)
        expected_stop, run = None, 0
        for step, ok in enumerate(finite, start=1):
            run = 0 if ok else run + 1
            if run >= limit:
                expected_stop = step
                break
        window, fetches, stop = MetricsWindow(limit), 0, None
        for step, (ok, loss) in enumerate(zip(finite, losses), start=1):
            window.add({"finite": np.bool_(ok), "loss": np.float32(loss)})
            if window.fetch_due():
                window.fetch()
                fetches += 1
                if window.diverged:
                    stop = step
                    break
        assert stop == expected_stop, (trial, limit, finite)
        last = expected_stop or 60
        if window.pending:
            window.fetch()
        assert window.take_mean_loss() == pytest.approx(np.mean(losses[:last][finite[:last]].astype(np.float32))
                                                        if finite[:last].any() else None)
        if finite.all():  # finite training reads the device every `limit` steps
            assert fetches == 60 // limit


def test_divergence_stops_at_the_same_step_with_sparse_reads(tmp_path, monkeypatch):
    """As tests/test_train.py's divergence test, but no log or checkpoint step forces a read: the
    window reads after steps 3 (3 pending) and 5 (2 pending: step 3 was non-finite) and stops at 5."""
    config = small_config(num_steps=20, log_every=100, checkpoint_every=100, max_consecutive_nan=3)
    real_make_global_batch, calls = trainer.make_global_batch, []

    def poisoned_after_two_steps(local_batch, *args):
        calls.append(len(calls) + 1)
        if len(calls) > 2:  # NaN images -> NaN latents -> NaN loss
            local_batch = {**local_batch, "image": np.full_like(local_batch["image"], np.nan)}
        return real_make_global_batch(local_batch, *args)

    real_fetch, fetched = MetricsWindow.fetch, []

    def counted_fetch(self):
        fetched.append(len(self.pending))
        return real_fetch(self)

    monkeypatch.setattr(trainer, "make_global_batch", poisoned_after_two_steps)
    monkeypatch.setattr(MetricsWindow, "fetch", counted_fetch)
    result = trainer.train(config, tmp_path)
    assert result.stop_reason == "diverged" and result.last_checkpoint is None
    assert int(result.state.step) == 5 and int(result.state.skipped) == 3
    assert fetched == [3, 2]
