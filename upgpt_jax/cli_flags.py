"""The command-line flags sample.py and eval.py share: which model to load and how to sample.

Light on purpose (absl and ml_collections only), so the CLIs answer --help without importing JAX.
"""
from __future__ import annotations

from typing import Any

from absl import app, flags
from ml_collections import config_flags


def parse_guidance(text: str) -> dict[str, float]:
    """'pose=1,style=2,text=3' -> {"pose": 1.0, "style": 2.0, "text": 3.0} (the CLIs' --guidance)."""
    scales = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            scales[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--guidance: {item!r} is not condition=scale") from None
    return scales


def define_model_flags() -> None:
    """--workdir/--step/--weights (a training run) or --params with --config (converted weights)."""
    config_flags.DEFINE_config_file("config", None, "With --params: the config the weights fit.", lock_config=False)
    flags.DEFINE_string("workdir", None, "A train.py workdir (its newest checkpoint and config).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_enum("weights", "ema", ["ema", "params"], "EMA or raw weights of the checkpoint.")
    flags.DEFINE_string("params", None, "Converted weights (python -m upgpt_jax.convert --out DIR).")


def define_sampler_flags() -> None:
    """Overrides of the run's config.sampling: --method, --num_steps, --eta, --guidance, --batch_size."""
    flags.DEFINE_enum("method", None, ["ddim", "ddpm", "dpmpp_2m"], "Sampler (default: config.sampling).")
    flags.DEFINE_integer("num_steps", None, "Sampler steps.")
    flags.DEFINE_float("eta", None, "DDIM eta.")
    flags.DEFINE_string("guidance", None, "Guidance scales, e.g. 'pose=1,style=2,text=3' (1 = none).")
    flags.DEFINE_integer("batch_size", None, "Samples per batch (default: config.sampling.batch_size).")


def sampler_overrides() -> dict[str, Any]:
    """The sampler flags that were given, as `SamplingSettings` fields (batch_size apart)."""
    values: dict[str, Any] = {"method": flags.FLAGS.method, "num_steps": flags.FLAGS.num_steps,
                              "eta": flags.FLAGS.eta}
    if flags.FLAGS.guidance:
        try:
            values["guidance"] = parse_guidance(flags.FLAGS.guidance)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    return {key: value for key, value in values.items() if value is not None}


def check_model_flags() -> None:
    """Exactly one of --workdir and --params, and --params with --config."""
    if bool(flags.FLAGS.workdir) == bool(flags.FLAGS.params):
        raise app.UsageError("give either --workdir (a training run) or --params with --config (converted weights)")
    if flags.FLAGS.params and flags.FLAGS.config is None:
        raise app.UsageError("--params needs --config")
