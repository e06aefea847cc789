"""The training step bar: its ETA counts only the steps after the first (compiling) one.

tqdm's own ETA divides by a rate that includes the first step, which compiles the train step
(a minute or more on CPU against well under a second per step after it), so right after that
step it read 8:31:43 for a 7-minute run. Here the first step is a named, timed phase and the
ETA is `steady_eta` of the steps since it.
"""
from __future__ import annotations

import time

from tqdm import tqdm

BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def steady_eta(steps_timed: int, seconds: float, steps_left: int) -> float | None:
    """Seconds to finish `steps_left` steps at the pace of the `steps_timed` steps that took `seconds`;
    None before any step was timed (the pace is unknown)."""
    if steps_timed <= 0:
        return None
    return seconds / steps_timed * steps_left


class TrainProgress:
    """The bar of one run from `start_step` to `total` (process 0 only: `enabled`)."""

    def __init__(self, total: int, start_step: int, started: float, enabled: bool = True):
        self.total, self.started = total, started
        self._bar = tqdm(total=total, initial=start_step, desc="train", unit="step", disable=not enabled,
                         dynamic_ncols=True, bar_format=BAR_FORMAT)
        self._enabled = enabled
        self._timed_from: tuple[int, float] | None = None  # (step, time) where the steady pace starts
        self._compile_started = 0.0
        self._values: dict[str, str] = {"eta": "-"}  # until a step after the first is timed

    def compiling(self, step: int) -> None:
        """Step `step` is the first of this process: it traces and compiles the train step."""
        self._bar.set_description("train: compiling", refresh=True)
        if self._enabled:
            tqdm.write(f"compiling the train step (XLA) and running step {step} ...")
        self._compile_started = time.perf_counter()

    def compiled(self, step: int) -> None:
        """The first step is done: its time is the compile's, and the ETA's pace starts here."""
        now = time.perf_counter()
        if self._enabled:
            tqdm.write(f"first step {step} done {now - self.started:.1f} s after start (compiling the train step "
                       f"and running it: {now - self._compile_started:.1f} s); the ETA counts the steps after it")
        self._bar.set_description("train", refresh=False)
        self._timed_from = (step, now)

    def step_done(self, step: int) -> None:
        if self._timed_from is not None:
            first, since = self._timed_from
            eta = steady_eta(step - first, time.perf_counter() - since, self.total - step)
            if eta is not None:
                self._values["eta"] = tqdm.format_interval(eta)
        self._show()
        self._bar.update(1)

    def show(self, **values: str) -> None:
        """Extra values beside the ETA (loss, skipped steps)."""
        self._values.update(values)
        self._show()

    def _show(self) -> None:
        self._bar.set_postfix_str(", ".join(f"{key} {value}" for key, value in self._values.items()),
                                  refresh=False)

    def close(self) -> None:
        self._bar.close()
