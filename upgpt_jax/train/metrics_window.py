"""The training metrics of the steps since the host last read them, kept on the device until it must.

Why: reading a step's metrics on the host (`jax.device_get`, `float(x)`, `if finite:`) waits
for that step to finish, so the host cannot queue the next step while the device works, and the
device idles for the host's share of every step (data, dispatch, logging). The trainer therefore
appends each step's metric arrays here and fetches all pending ones in one transfer only where
it needs their values: on log steps, on checkpoint steps (a non-finite step is never saved) and
often enough to stop after `max_consecutive_nan` non-finite losses at the same step as a check
after every step would (`fetch_due`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax


class MetricsWindow:
    """Pending per-step metrics (device arrays), the finite losses since the last log (host floats)
    and the count of non-finite steps in a row up to the newest fetched step."""

    def __init__(self, max_consecutive_nan: int):
        self.max_consecutive_nan = max_consecutive_nan
        self.pending: list[Mapping[str, jax.Array]] = []
        self.finite_losses: list[float] = []
        self.consecutive_nan = 0

    def add(self, metrics: Mapping[str, jax.Array]) -> None:
        """Keep one step's metrics (as returned by the train step: nothing is read here)."""
        self.pending.append(metrics)

    def fetch_due(self) -> bool:
        """Whether the pending steps could complete a run of `max_consecutive_nan` non-finite steps.

        After a fetch that left `consecutive_nan` = c, the count can reach the limit no sooner than
        (limit - c) steps later; fetching exactly then finds any divergence at the step it completes
        on, as a per-step check would, while finite training reads the host every `limit` steps.
        """
        return len(self.pending) >= self.max_consecutive_nan - self.consecutive_nan

    def fetch(self) -> dict[str, Any]:
        """Bring the pending steps' metrics to the host in one transfer and account for them in
        order (finite losses, consecutive non-finite count); returns the newest step's values."""
        fetched = jax.device_get(self.pending)
        self.pending = []
        for metrics in fetched:
            finite = bool(metrics["finite"])
            if finite:
                self.finite_losses.append(float(metrics["loss"]))
            self.consecutive_nan = 0 if finite else self.consecutive_nan + 1
        return fetched[-1]

    @property
    def diverged(self) -> bool:
        """`max_consecutive_nan` non-finite losses in a row, up to the newest fetched step."""
        return self.consecutive_nan >= self.max_consecutive_nan

    def take_mean_loss(self) -> float | None:
        """The mean of the finite losses fetched since the previous call (None if there were none)."""
        losses, self.finite_losses = self.finite_losses, []
        return sum(losses) / len(losses) if losses else None
