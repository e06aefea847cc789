"""The console view of long phases: named, timed phases, and a training ETA without the compile."""
import pytest

from upgpt_jax.phases import phase
from upgpt_jax.train import progress as progress_module
from upgpt_jax.train.progress import TrainProgress, steady_eta


def test_steady_eta_is_the_pace_of_the_timed_steps_times_the_steps_left():
    assert steady_eta(10, 5.0, 90) == 45.0  # 0.5 s a step
    assert steady_eta(4, 2.0, 0) == 0.0
    assert steady_eta(0, 51.0, 599) is None  # only the compiling step: no pace yet


def test_phase_names_what_runs_and_its_time(capsys, monkeypatch):
    clock = iter([100.0, 112.5, 200.0, 201.0])
    monkeypatch.setattr("upgpt_jax.phases.time.perf_counter", lambda: next(clock))
    with phase("condition statistics"):
        pass
    assert capsys.readouterr().out.splitlines() == ["condition statistics ...", "condition statistics: 12.5 s"]
    with phase("quiet", enabled=False):
        pass
    assert capsys.readouterr().out == ""


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    return now


def test_the_train_bar_names_the_compile_and_leaves_it_out_of_the_eta(capsys, clock):
    # 600 steps: the first compiles for 51 s, then each takes 0.5 s. tqdm's own ETA after step 2
    # would be about 51.5 s / 2 steps * 598 steps = 4 h; the steady pace gives 598 * 0.5 s = 4:59.
    bar = TrainProgress(total=600, start_step=0, started=-9.0)
    bar.compiling(1)
    clock[0] = 51.0
    bar.compiled(1)
    bar.step_done(1)
    for step in range(2, 11):
        clock[0] += 0.5
        bar.step_done(step)
    bar.close()
    captured = capsys.readouterr()
    assert "compiling the train step (XLA) and running step 1 ..." in captured.out
    assert "first step 1 done 60.0 s after start (compiling the train step and running it: 51.0 s)" in captured.out
    assert "eta 04:55" in captured.err  # 590 steps left at 0.5 s
