"""A diffusion run's sampling weights as one small folder, which sample.py and eval.py read alone.

    python -m upgpt_jax.rundir.release --workdir workdirs/synthetic_reference/diffusion --out DIR \\
        [--step N] [--dtype float16|float32]
    python sample.py --params DIR --requests configs/demo_requests.jsonl --out OUT

A run's folder keeps the raw weights, the EMA and the optimizer state (four copies of the trainable
weights), and its config names the CLIP folder by the path it was trained with. A release keeps
only what sampling reads, in `--dtype` (float16 by default: half the bytes; the loader casts back
to float32), so that a small model fits in a repository:
- DIR/params/ and DIR/metadata.json, a converted-params folder (weights/params_io) of the EMA
  weights and the frozen parts (VAE, condition statistics). Its metadata's `config` is the model
  config, as the converter writes it (so the exporter reads a release too), and `run_config` the
  run's whole config (sampling defaults, dataset, the measured latent scale);
- DIR/clip/, the run's CLIP as a CLIPModel folder (config.json, flax_model.msgpack), when the run
  read one from `model.clip.path`; the released config then points there.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from upgpt_jax import storage
from upgpt_jax.rundir.restore import restore_params, run_config, tuples_config
from upgpt_jax.weights.params_io import METADATA_FILE, save_params

CLIP_DIR = "clip"
DTYPES = ("float16", "float32")


def release_run(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None,
                dtype: str = "float16") -> dict[str, Any]:
    """Writes checkpoint `step` (default: the newest) of diffusion run `workdir` to `out` (local or
    gs://; it must not hold params yet) as described above; returns the metadata written."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    config, step = run_config(workdir, step)
    if config.train.stage != "diffusion":
        raise ValueError(f"{workdir} is a {config.train.stage!r}-stage run; release a diffusion-stage run")
    params = _cast(jax.device_get(restore_params(workdir, config, step, "ema")), dtype)
    released = config.copy_and_resolve_references()
    clip_source = config.model.clip.get("path", "")
    released.model.clip.path = ""  # the loader points it at out/clip/
    metadata = {"sources": {"workdir": str(workdir), "step": int(step), "weights": "ema"}, "dtype": dtype,
                "config": released.model.to_dict(), "run_config": json.loads(released.to_json()),
                "clip": CLIP_DIR if clip_source else None}
    save_params(out, params, metadata)
    if clip_source:
        _write_clip(clip_source, storage.path(out) / CLIP_DIR, dtype)
    return metadata


def released_config(directory: str | os.PathLike) -> ml_collections.ConfigDict | None:
    """The run config of a release at `directory`, its `model.clip.path` at the release's CLIP
    folder; None for a converted-params folder without one (weights made elsewhere)."""
    file = storage.path(directory) / METADATA_FILE
    if not file.exists():
        raise FileNotFoundError(f"{directory} is neither a release nor converted weights: it has no {METADATA_FILE}")
    metadata = json.loads(file.read_text())
    if "run_config" not in metadata:
        return None
    config = tuples_config(ml_collections.ConfigDict(metadata["run_config"]))
    if metadata.get("clip"):
        config.model.clip.path = str(storage.path(directory) / metadata["clip"])
    return config


def _cast(tree: Any, dtype: str) -> Any:
    """Floating leaves as numpy arrays of `dtype`, the others as they are."""
    def cast(leaf: Any) -> np.ndarray:
        leaf = np.asarray(leaf)
        return leaf.astype(dtype) if np.issubdtype(leaf.dtype, np.floating) else leaf

    return jax.tree.map(cast, tree)


def _write_clip(source: str, folder: Any, dtype: str) -> None:
    """The CLIP of `source` (any folder models.clip.load_clip reads) as config.json and a Flax
    msgpack of the encoders' weights in `dtype`."""
    from flax import serialization

    from upgpt_jax.models.clip import load_clip

    encoders, params = load_clip(source)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(encoders.config.to_json_string())
    (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(_cast(params, dtype)))


def main(argv: list[str]) -> None:
    from absl import flags, logging

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every read and write at INFO
    metadata = release_run(flags.FLAGS.workdir, flags.FLAGS.out, flags.FLAGS.step, flags.FLAGS.dtype)
    source = metadata["sources"]
    print(f"released step {source['step']} of {source['workdir']} ({metadata['dtype']}) to {flags.FLAGS.out}; "
          f"sample it with: python sample.py --params {flags.FLAGS.out} --out OUT")


if __name__ == "__main__":
    from absl import app, flags

    from upgpt_jax.cli_errors import one_line_errors, parse_flags

    flags.DEFINE_string("workdir", None, "A diffusion-stage training run (local or gs://).")
    flags.DEFINE_string("out", None, "The release folder to write (local or gs://; must not hold params).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_enum("dtype", "float16", list(DTYPES), "Storage dtype of the floating weights.")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(one_line_errors(main), flags_parser=parse_flags)
