"""The training settings checked before anything is set up: one line naming the field and what it allows.

Why: a bad value otherwise surfaces late and far from its cause: `checkpoint_every=0` as a
ZeroDivisionError after the first (compiled) step, `batch_size=0` after the workdir was created,
and a negative learning rate not at all (the run climbs the loss).
"""
from __future__ import annotations

import math
from typing import Any

import ml_collections

from upgpt_jax.cli_errors import BadInput
from upgpt_jax.rundir.shardings import STAGE_PARTS

# (section, field, smallest allowed value, whether the smallest value itself is allowed, integer)
_BOUNDS = (
    ("train", "batch_size", 1, True, True),
    ("train", "num_steps", 1, True, True),
    ("train", "log_every", 1, True, True),
    ("train", "checkpoint_every", 1, True, True),
    ("train", "keep_checkpoints", 1, True, True),
    ("train", "max_consecutive_nan", 1, True, True),
    ("train", "grad_accum_steps", 1, True, True),
    ("train", "sample_every", 0, True, True),
    ("train", "max_update_ratio", 0, False, False),
    ("optim", "learning_rate", 0, False, False),
    ("optim", "warmup_steps", 0, True, True),
    ("optim", "decay_steps", 0, True, True),
    ("optim", "weight_decay", 0, True, False),
    ("optim", "grad_clip_norm", 0, True, False),
)


class ConfigError(BadInput):
    """A setting outside what it allows."""


def check_training_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for the first setting of `config.train` / `config.optim` outside its range."""
    for section, name, low, inclusive, integer in _BOUNDS:
        if name not in config[section]:  # configs saved before the field existed
            continue
        value = config[section][name]
        kind = "an integer" if integer else "a number"
        expected = f"{kind} {'>=' if inclusive else '>'} {low}"
        if not _in_range(value, low, inclusive, integer):
            raise ConfigError(f"config.{section}.{name}: expected {expected}, got {value!r}")
    if config.train.stage not in STAGE_PARTS:
        raise ConfigError(f"config.train.stage: expected one of {sorted(STAGE_PARTS)}, got {config.train.stage!r}")
    if not 0 <= config.train.ema_decay <= 1:
        raise ConfigError(f"config.train.ema_decay: expected a number in [0, 1], got {config.train.ema_decay!r}")


def _in_range(value: Any, low: float, inclusive: bool, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if integer and not float(value).is_integer() or not math.isfinite(value):
        return False
    return value >= low if inclusive else value > low
