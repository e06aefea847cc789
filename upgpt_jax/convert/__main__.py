r"""Import released weights into a converted-params directory (see params_io), or with --export
write our weights back in the original's layouts (see export_cli).

  python -m upgpt_jax.convert --format ldm --checkpoint upgpt.ckpt \
      --config configs/upgpt_256.py --out weights/upgpt_256 [--ema]
  python -m upgpt_jax.convert --format diffusers --unet_dir unet/ --vae_dir vae/ \
      --config configs/upgpt_256.py --out weights/sd_unet

Every config field can be overridden (`--config.model.unet.channels=64`). CLIP weights are not
converted: the model loads a Hugging Face CLIP folder (config.model.clip.path) itself.
"""

from __future__ import annotations

import datetime
import pathlib
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from upgpt_jax import storage
from upgpt_jax.convert import command_line, diffusers_folders, export_cli, ldm
from upgpt_jax.convert.part_shapes import count_params
from upgpt_jax.weights.params_io import PARAMS_DIR, PARTS, save_params
from upgpt_jax.weights.torch_params import WeightConversionError
from upgpt_jax.weights.weight_files import WeightFileError, read_state_dict


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    """A fresh flag set per call, so `main` can run more than once in a process (tests); the config
    flag reads its overrides from `argv` rather than sys.argv."""
    define = dict(flag_values=values)
    flags.DEFINE_enum(
        "format", None, ["ldm", "diffusers"], "Layout of the weights to import.", **define
    )
    config_flags.DEFINE_config_file(
        "config", None, "ml_collections config file (configs/*.py).", sys_argv=list(argv), **define
    )
    flags.DEFINE_string(
        "out", None, "Output directory (must not hold converted params yet).", **define
    )
    flags.DEFINE_string(
        "checkpoint", None, "--format ldm: .ckpt/.pt/.safetensors state dict.", **define
    )
    flags.DEFINE_bool(
        "ema", False, "--format ldm: take the UNet from the EMA weights (model_ema.*).", **define
    )
    flags.DEFINE_list("parts", list(PARTS), "--format ldm: parts to convert.", **define)
    flags.DEFINE_string(
        "pose_prefix", ldm.POSE_PREFIX, "--format ldm: key prefix of the pose projection.", **define
    )
    flags.DEFINE_string(
        "unet_dir", None, "--format diffusers: UNet2DConditionModel folder.", **define
    )
    flags.DEFINE_string("vae_dir", None, "--format diffusers: AutoencoderKL folder.", **define)
    for name in ("format", "config", "out"):
        flags.mark_flag_as_required(name, flag_values=values)
    flags.register_validator(
        "parts",
        lambda parts: set(parts) <= set(PARTS),
        f"--parts must be a subset of {','.join(PARTS)}",
        flag_values=values,
    )
    flags.register_validator(
        "out",
        lambda out: out is None or not (storage.path(out) / PARAMS_DIR).exists(),  # local or gs://
        "--out already holds converted params; choose a new directory",
        flag_values=values,
    )
    flags.register_multi_flags_validator(
        ["format", "checkpoint", "unet_dir", "vae_dir"],
        lambda given: (
            given["checkpoint"]
            if given["format"] == "ldm"
            else bool(given["unet_dir"] or given["vae_dir"])
        ),
        "--format ldm needs --checkpoint; --format diffusers needs --unet_dir and/or --vae_dir",
        flag_values=values,
    )


def main(argv: Sequence[str]) -> int:
    """Runs the import (or, with --export, the export) for command line `argv` (argv[0] is the
    program); returns the exit code."""
    if any(arg.split("=")[0] in ("--export", "-export") for arg in argv[1:]):
        return export_cli.main(argv)
    values = flags.FlagValues()
    _define_flags(values, argv)
    stop = command_line.parse(values, argv, __doc__)
    if stop is not None:
        return stop
    try:
        params, metadata = (_import_ldm if values.format == "ldm" else _import_diffusers)(values)
    except (WeightConversionError, WeightFileError, diffusers_folders.ConfigMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    metadata.update(
        format=values.format,
        config_file=str(
            pathlib.Path(config_flags.get_config_filename(values["config"])).absolute()
        ),
        config=values.config.model.to_dict(),
        converted_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        param_counts={part: count_params(tree) for part, tree in params.items()},
    )
    save_params(values.out, params, metadata)
    _print_summary(values.out, metadata)
    return 0


def _import_ldm(values: flags.FlagValues) -> tuple[dict[str, Any], dict[str, Any]]:
    state_dict = read_state_dict(values.checkpoint)
    conversion = ldm.convert_ldm_state_dict(
        state_dict,
        values.config.model,
        source=values.checkpoint,
        parts=values.parts,
        use_ema=values.ema,
        pose_prefix=values.pose_prefix,
    )
    metadata = {
        "sources": [_describe_file(values.checkpoint)],
        "use_ema": values.ema,
        "ignored_keys": conversion.ignored,
        "checkpoint_scale_factor": conversion.scale_factor,
    }
    return conversion.params, metadata


def _import_diffusers(values: flags.FlagValues) -> tuple[dict[str, Any], dict[str, Any]]:
    params: dict[str, Any] = {}
    metadata: dict[str, Any] = {"sources": []}
    for part, directory, load in (
        ("unet", values.unet_dir, diffusers_folders.load_diffusers_unet),
        ("vae", values.vae_dir, diffusers_folders.load_diffusers_vae),
    ):
        if directory:
            params[part], info = load(directory, values.config.model)
            metadata["sources"] += [_describe_file(path) for path in info.pop("files")]
            if "scaling_factor" in info:
                metadata["vae_scaling_factor"] = info["scaling_factor"]
    return params, metadata


def _describe_file(path: str) -> dict[str, Any]:
    path = pathlib.Path(path).absolute()
    return {"path": str(path), "bytes": path.stat().st_size}


def _group_keys(keys: Iterable[str]) -> Counter:
    """Key counts per module ('model.diffusion_model', 'cond_stage_model.transformer', ...)."""
    return Counter(
        ".".join(key.split(".")[:2]) if key.count(".") >= 2 else key.split(".")[0] for key in keys
    )


def _print_summary(out: str, metadata: dict[str, Any]) -> None:
    print(
        f"wrote {out} ({metadata['format']} from "
        f"{', '.join(source['path'] for source in metadata['sources'])})"
    )
    for part, count in metadata["param_counts"].items():
        print(f"  {part:8s} {count:>13,d} parameters")
    ignored = metadata.get("ignored_keys", [])
    if ignored:
        print(f"  not converted: {len(ignored)} checkpoint keys")
        for group, count in sorted(_group_keys(ignored).items()):
            print(f"    {group}: {count}")
    scale = metadata.get("checkpoint_scale_factor") or metadata.get("vae_scaling_factor")
    wanted = metadata["config"]["scale_factor"]
    if scale is not None and abs(scale - wanted) > 1e-6:
        print(
            f"  note: the weights were trained with latent scale {scale}, "
            f"config.model.scale_factor is {wanted}"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
