r"""Export our weights to the original's PyTorch layouts (the inverse of the import, see export.py).

  python -m upgpt_jax.convert --export ldm --params weights/upgpt_256 --out upgpt.ckpt [--ema]
  python -m upgpt_jax.convert --export ldm --workdir runs/upgpt --weights ema --out upgpt.ckpt
  python -m upgpt_jax.convert --export diffusers --params weights/upgpt_256 --out exported/

--params is a converted-params directory (its metadata.json holds the model config); --workdir a
diffusion-stage training run (its checkpoint holds the config), read at --step (default: the
newest) with its EMA or raw weights (--weights ema|params). --ema (ldm) also writes LitEma's
model_ema.* buffers: the run's EMA weights, or a params directory's one UNet. diffusers export
writes OUT/unet and OUT/vae. --out may be local or gs://.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from upgpt_jax import storage
from upgpt_jax.convert import command_line, export
from upgpt_jax.weights.params_io import load_params
from upgpt_jax.weights.weight_files import WeightFileError

FORMATS = ("ldm", "diffusers")
# --weights of a run, named as sample.py names them (rundir.restore.WEIGHTS; "params": raw).
RUN_WEIGHTS = ("ema", "params")


@dataclasses.dataclass
class ExportSource:
    """Params to export, the model config they fit, and the EMA UNet for LitEma's buffers."""

    params: dict[str, Any]
    model_config: Any
    ema_unet: Any = None
    ema_decay: float = export.LITEMA_DECAY
    ema_updates: int = 0


def from_params_dir(directory: str, ema: bool) -> ExportSource:
    """A converted-params directory; its one UNet doubles as the EMA when `ema`."""
    import ml_collections

    params, metadata = load_params(directory)
    if "config" not in metadata:
        raise WeightFileError(
            f"{directory}/metadata.json holds no model config (write the directory with "
            "`python -m upgpt_jax.convert`)"
        )
    ema_unet = params.get("unet") if ema else None
    return ExportSource(params, ml_collections.ConfigDict(metadata["config"]), ema_unet)


def from_workdir(workdir: str, step: int | None, weights: str, ema: bool) -> ExportSource:
    """A diffusion-stage training run at `step`: its `weights` ("ema" or "params") and, with `ema`,
    its EMA UNet with the run's decay and step count."""
    import jax

    from upgpt_jax.rundir.restore import restore_params, run_config

    config, step = run_config(workdir, step)
    if config.train.stage != "diffusion":
        raise WeightFileError(
            f"{workdir} is a {config.train.stage!r}-stage run; export a diffusion-stage run"
        )
    params = jax.device_get(restore_params(workdir, config, step, weights))
    ema_unet = None
    if ema:
        ema_params = params if weights == "ema" else restore_params(workdir, config, step, "ema")
        ema_unet = jax.device_get(ema_params["unet"])
    return ExportSource(params, config.model, ema_unet, float(config.train.ema_decay), step)


def _define_flags(values: flags.FlagValues) -> None:
    define = dict(flag_values=values)
    flags.DEFINE_enum("export", None, list(FORMATS), "Layout to write.", **define)
    flags.DEFINE_string("params", None, "Converted-params directory to export.", **define)
    flags.DEFINE_string("workdir", None, "Training run to export (instead of --params).", **define)
    flags.DEFINE_integer("step", None, "--workdir: checkpoint step (default: newest).", **define)
    flags.DEFINE_enum("weights", "ema", list(RUN_WEIGHTS), "--workdir: EMA or raw.", **define)
    flags.DEFINE_bool("ema", False, "ldm: also write LitEma's model_ema.* buffers.", **define)
    flags.DEFINE_string("out", None, "ldm: checkpoint file; diffusers: folder.", **define)
    for name in ("export", "out"):
        flags.mark_flag_as_required(name, flag_values=values)
    flags.register_multi_flags_validator(
        ["params", "workdir"],
        lambda given: (given["params"] is None) != (given["workdir"] is None),
        "give one of --params (converted weights) and --workdir (a training run)",
        flag_values=values,
    )
    flags.register_validator(
        "out",
        lambda out: out is None or not storage.path(out).exists(),  # local or gs://
        "--out exists already; choose a new path",
        flag_values=values,
    )


def main(argv: Sequence[str]) -> int:
    """Runs the export for command line `argv` (argv[0] is the program); returns the exit code:
    2 for bad arguments or unreadable inputs, each told in one line."""
    values = flags.FlagValues()
    _define_flags(values)
    stop = command_line.parse(values, argv, __doc__)
    if stop is not None:
        return stop
    try:
        source = (
            from_params_dir(values.params, values.ema)
            if values.params
            else from_workdir(values.workdir, values.step, values.weights, values.ema)
        )
    except (WeightFileError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if values.export == "ldm":
        state_dict = export.ldm_state_dict(
            source.params,
            source.model_config,
            ema_unet=source.ema_unet,
            ema_decay=source.ema_decay,
            ema_updates=source.ema_updates,
        )
        export.write_ldm_checkpoint(state_dict, values.out)
        print(f"wrote {values.out} ({len(state_dict)} tensors, LDM Lightning layout)")
    else:
        written = export.write_diffusers_folders(source.params, source.model_config, values.out)
        print(f"wrote {', '.join(f'{values.out}/{name}' for name in written)} (diffusers folders)")
        if "fusion" in source.params:
            print("  the pose projection has no diffusers layout; --export ldm writes it")
    return 0
