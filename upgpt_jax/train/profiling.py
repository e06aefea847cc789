"""A `jax.profiler` trace of chosen training steps (`config.train.profile_steps`).

Why a window of steps and not the whole run: a trace records every host call and device kernel
(megabytes per step), and the steps worth reading are the steady ones after compilation. The
trace goes to WORKDIR/profile/plugins/profile/<run>/<host>.xplane.pb, the layout TensorBoard's
profile plugin and xprof read (`tensorboard --logdir WORKDIR/profile`), with one
`StepTraceAnnotation("train", step_num=step)` per step, from which they split the trace into
steps and compute the step-time breakdown.

Every process traces its own host and devices (jax.profiler is per process), each writing its own
`<host>.xplane.pb`, as multi-host users of xprof expect; the files of one run sit side by side
when the workdir is shared. A resumed run traces the window's steps that it executes. A gs://
workdir is passed through as a URL: JAX's profiler writes to GCS itself (not exercised by the tests).
"""
from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Sequence
from typing import Any

import jax

STEP_NAME = "train"


def parse_profile_steps(value: str | Sequence[Any] | None) -> tuple[int, int] | None:
    """`config.train.profile_steps` -> (start, count), or None for no trace ("", () or None).

    Accepts what reaches the config: a (START, COUNT) tuple or list (a config file, or
    `--config.train.profile_steps=10,5`, which ml_collections parses into a tuple) and the string
    "START,COUNT". Anything else raises one ValueError naming the field.
    """
    if value is None or (isinstance(value, (str, tuple, list)) and len(value) == 0):
        return None
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        start, count = (int(str(item).strip()) for item in items)
    except (TypeError, ValueError):
        start = count = 0
    if start < 1 or count < 1:
        raise ValueError(f"config.train.profile_steps={value!r}: expected START,COUNT, two integers >= 1 "
                         f"(e.g. 10,5 traces steps 10..14), or () for no trace")
    return start, count


class StepProfiler:
    """Starts the trace at the first step of the window, annotates each traced step and stops after
    the last one (or when the loop ends early, on leaving the `with` block).

    Use: `with StepProfiler(steps, dir) as profiler:` around the loop; per step
    `with profiler.step(step): ...` around the step's work, then `profiler.after_step(step, state)`.
    """

    def __init__(self, steps: tuple[int, int] | None, directory: str | pathlib.Path):
        self.first, self.last = (steps[0], steps[0] + steps[1] - 1) if steps else (0, -1)
        self.directory = str(directory)
        self.active = False

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def step(self, step: int) -> contextlib.AbstractContextManager:
        """The context of step `step`'s work: a step annotation while tracing (started here at the
        window's first step this run executes), else nothing."""
        if not self.active and self.first <= step <= self.last:
            jax.profiler.start_trace(self.directory)
            self.active = True
        if self.active:
            return jax.profiler.StepTraceAnnotation(STEP_NAME, step_num=step)
        return contextlib.nullcontext()

    def after_step(self, step: int, state: Any) -> None:
        """After the host work of step `step`: at the window's last step, wait for `state` (the
        device work was only dispatched) and stop the trace."""
        if self.active and step >= self.last:
            self.stop(state)

    def stop(self, state: Any = None) -> None:
        """Stop a running trace, first waiting for `state` when given; a no-op when not tracing."""
        if self.active:
            if state is not None:
                jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
