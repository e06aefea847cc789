"""Evaluation protocols: name -> function(EvalOptions) -> EvalResult, chosen by `eval.py --protocol`.

A protocol fixes what is generated (which pairs, which conditions, how many) and which metrics
are computed against what, so two runs of the same protocol are comparable. Each module
registers its protocols with `@register(name)`; `eval.py` writes the result's table, JSON and
worst-case grid (upgpt_jax/eval/report.py), so protocols only compute.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class EvalOptions:
    """What `eval.py` was asked (its flags). A protocol uses the fields it needs and names the
    flag in its error when one it needs is missing."""

    out_dir: str
    workdir: str | None = None  # a train.py run: its newest checkpoint and config
    step: int | None = None
    weights: str = "ema"
    params_dir: str | None = None  # converted weights (with `config`)
    config: Any = None
    data_dir: str | None = None  # DeepFashion in the original layout, or a prepared TFDS folder
    samples_dir: str | None = None  # already generated images: evaluate them, generate nothing
    num_examples: int | None = None  # None: the protocol's full set
    batch_size: int | None = None
    seed: int = 0
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # SamplingSettings overrides
    lpips_dir: str | None = None  # folder with the LPIPS backbone + head files
    inception_path: str | None = None  # FID-Inception weights file (pytorch-fid's)
    ablations: bool = True


@dataclasses.dataclass
class EvalResult:
    """What a protocol measured.

    `metrics`: headline numbers, one table row each ("group/metric": value), e.g.
    {"generate/silhouette_iou": 0.91}; `per_example`: a list of values per metric (written to the
    JSON); `worst`: labelled image rows for the worst-case grid, each (label, [images...]) with
    uint8 (H, W, 3) images (e.g. [ground truth, sample]) and a label that names the example and
    the metric it is worst in; `worst_columns`: what each column of those rows shows (the grid's
    headers); `details`: anything else JSON-able (settings, checkpoint, counts).
    """

    protocol: str
    metrics: dict[str, float]
    per_example: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    worst: list[tuple[str, list[np.ndarray]]] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    worst_columns: list[str] = dataclasses.field(default_factory=list)


Protocol = Callable[[EvalOptions], EvalResult]
PROTOCOLS: dict[str, Protocol] = {}
PROTOCOL_MODULES = ("synthetic", "deepfashion")  # each registers its protocols when imported


def load_protocols() -> dict[str, Protocol]:
    """Every registered protocol by name (imports the protocol modules)."""
    for module in PROTOCOL_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return PROTOCOLS


def register(name: str) -> Callable[[Protocol], Protocol]:
    def add(function: Protocol) -> Protocol:
        if name in PROTOCOLS:
            raise ValueError(f"protocol {name!r} is registered twice")
        PROTOCOLS[name] = function
        return function

    return add


class ProtocolError(ValueError):
    """Bad or missing input for a protocol (a flag, a file, a folder): eval.py prints it and exits 2."""


def load_model(options: EvalOptions) -> Any:
    """The model to evaluate: `--workdir` (a training run), `--params` (a run's release) or
    `--params` with `--config` (converted weights)."""
    from upgpt_jax import sampling

    if options.workdir:
        return sampling.load_from_workdir(options.workdir, options.step, options.weights)
    if options.params_dir:
        try:
            return sampling.load_from_params(options.params_dir, options.config)
        except ValueError as error:
            raise ProtocolError(str(error)) from None
    raise ProtocolError("give --workdir (a training run), --params (a release, or converted weights with --config), "
                        "or --samples_dir with images generated already")


def sampling_settings(loaded: Any, options: EvalOptions) -> Any:
    """The run's `config.sampling` with eval.py's overrides (method, num_steps, eta, guidance, batch)."""
    from upgpt_jax.sampling import SamplingSettings

    return SamplingSettings.from_config(loaded.config.sampling, batch_size=options.batch_size, **options.sampling)
