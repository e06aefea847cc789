"""An EvalResult -> a printed table, OUT/metrics.json and OUT/worst.png (the worst cases, with column
headers and row labels)."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from upgpt_jax import storage
from upgpt_jax.eval.protocols import EvalResult
from upgpt_jax.sampling.grid import image_grid
from upgpt_jax.sampling.outputs import jsonable


def format_table(result: EvalResult) -> str:
    """Two aligned columns, metric and value, in the protocol's order."""
    width = max([len("metric")] + [len(name) for name in result.metrics])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 9}"]
    lines += [f"{name:<{width}}  {_format_value(value)}" for name, value in result.metrics.items()]
    return "\n".join(lines)


def _format_value(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 1e4 else str(value)


def write_report(result: EvalResult, out_dir: str | pathlib.Path) -> dict[str, storage.AnyPath]:
    """Write metrics.json (metrics, per-example values, details) and worst.png to `out_dir` (a local folder
    or a gs:// URL); return their paths."""
    out = storage.path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "metrics.json"}
    record = {"protocol": result.protocol, "metrics": result.metrics, "details": result.details,
              "per_example": result.per_example}
    written["json"].write_text(json.dumps(record, indent=2, default=jsonable) + "\n")
    if result.worst:
        written["worst"] = out / "worst.png"
        storage.save_image(worst_grid(result), written["worst"])
    return written


def worst_grid(result: EvalResult) -> np.ndarray:
    """The worst cases as a table: one row per example (its label, which names the metric, on the
    left), the protocol's column names above the first row (as a legend where they do not fit)."""
    columns = max(len(images) for _, images in result.worst)
    cells = []
    for _, images in result.worst:
        cells += list(images) + [np.full_like(images[0], 255)] * (columns - len(images))
    headers = None
    if result.worst_columns:
        headers = (list(result.worst_columns) + [""] * columns)[:columns] + [""] * (len(cells) - columns)
    return image_grid(cells, headers, columns, row_labels=[label for label, _ in result.worst])
