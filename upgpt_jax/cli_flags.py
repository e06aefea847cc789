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
    """--workdir/--step/--weights (a training run) or --params (a run's release, or converted weights
    with --config)."""
    config_flags.DEFINE_config_file("config", None, "With --params of converted weights: the config they fit.",
                                    lock_config=False)
    flags.DEFINE_string("workdir", None, "A train.py workdir (its newest checkpoint and config).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_enum("weights", "ema", ["ema", "params"], "EMA or raw weights of the checkpoint.")
    flags.DEFINE_string("params", None, "A run's release (python -m upgpt_jax.rundir.release) or converted weights "
                        "(python -m upgpt_jax.convert --out DIR).")


# Named sampler settings (--preset), which the other sampler flags override. "released" is how the
# original code sampled (UPGPT's ldm/models/diffusion/ddpm.py log_images: DDIMSampler, 200 steps,
# eta 1, EMA weights, no guidance); without a preset, the config's `sampling` section applies (by
# default the fast one: 50 deterministic DDIM steps).
SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "released": dict(method="ddim", num_steps=200, eta=1.0, guidance=dict(pose=1.0, style=1.0, text=1.0),
                     edit_region="whole"),
}


def define_sampler_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Overrides of the run's config.sampling: --preset, --method, --num_steps, --eta, --guidance,
    --batch_size, --edit_region (`flag_values`: the global flags, or a fresh set in tests)."""
    define = dict(flag_values=flag_values)
    flags.DEFINE_enum("preset", None, list(SAMPLER_PRESETS),
                      "Named sampler settings; 'released': the original's DDIM, 200 steps, eta 1, no guidance.",
                      **define)
    flags.DEFINE_enum("method", None, ["ddim", "ddpm", "dpmpp_2m"], "Sampler (default: config.sampling).", **define)
    flags.DEFINE_integer("num_steps", None, "Sampler steps.", **define)
    flags.DEFINE_float("eta", None, "DDIM eta.", **define)
    flags.DEFINE_string("guidance", None, "Guidance scales, e.g. 'pose=1,style=2,text=3' (1 = none).", **define)
    flags.DEFINE_integer("batch_size", None, "Samples per batch (default: config.sampling.batch_size).", **define)
    flags.DEFINE_enum("edit_region", None, ["inferred", "whole"],
                      "Where an edit may change the person: 'inferred' (default), the region the edit acts on, "
                      "found by the model (DiffEdit), the rest kept from the unedited sample; 'whole': the "
                      "original's edit, by the edited conditions alone.", **define)


def sampler_overrides(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """The sampler flags that were given, over the --preset's settings, as `SamplingSettings`
    fields (batch_size apart)."""
    values: dict[str, Any] = dict(SAMPLER_PRESETS.get(flag_values.preset, {}))
    values.update({name: flag_values[name].value for name in ("method", "num_steps", "eta", "edit_region")
                   if flag_values[name].value is not None})
    if flag_values.guidance:
        try:
            values["guidance"] = parse_guidance(flag_values.guidance)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    return values


def check_model_flags() -> None:
    """Exactly one of --workdir and --params (converted weights need --config too; a run's release
    carries its own, which the loader checks)."""
    if bool(flags.FLAGS.workdir) == bool(flags.FLAGS.params):
        raise app.UsageError("give either --workdir (a training run) or --params (a release, or converted weights "
                             "with --config)")
