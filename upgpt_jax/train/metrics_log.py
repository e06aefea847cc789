"""A run's logs: DIR/metrics.jsonl (one strict-JSON object per logged step) and DIR/tensorboard/.

Why strict: `json.dumps` writes a non-finite float as a bare `NaN`, which most JSON readers outside
Python reject; such values are written as null. On resume the file is cut back to the rows up to
the restored step (an interrupted run logged past its checkpoint) by writing a new file and
renaming it over the old one, so a crash during the rewrite leaves the old rows, never a half file.
"""
from __future__ import annotations

import json
import math
from typing import Any

from upgpt_jax import storage
from upgpt_jax.distributed import is_main_process
from upgpt_jax.rundir.layout import METRICS_FILE, TENSORBOARD_DIR
from upgpt_jax.train.summary import SummaryWriter


class MetricsLog:
    """Appends one JSON object per logged step to DIR/metrics.jsonl and writes the same scalars (and
    sample grids) as TensorBoard events to DIR/tensorboard/ (process 0 only)."""

    def __init__(self, workdir: storage.AnyPath, resume_step: int):
        self.path = workdir / METRICS_FILE
        self.enabled = is_main_process()
        self.tensorboard = SummaryWriter(workdir / TENSORBOARD_DIR, enabled=self.enabled)
        self._file = None
        if self.enabled:
            kept = None
            if self.path.exists():  # drop rows an interrupted run logged after its checkpoint
                steps = [(line, _step(line)) for line in self.path.read_text().splitlines()]
                kept = "".join(line + "\n" for line, step in steps if step is not None and step <= resume_step).encode()
            # An object store cannot append: AppendFile re-uploads the file (every ~30 s and on close).
            self._file = storage.AppendFile(self.path, initial=kept)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            record = {key: None if isinstance(value, float) and not math.isfinite(value) else value
                      for key, value in record.items()}
            self._file.write((json.dumps(record, allow_nan=False) + "\n").encode())
            self.tensorboard.scalars(record["step"], {key: value for key, value in record.items() if key != "step"})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self.tensorboard.close()


def _step(line: str) -> int | None:
    """The step of one metrics.jsonl row; None for a blank line or a row cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
