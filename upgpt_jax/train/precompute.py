"""Encode the training split once with the frozen encoders, so the diffusion stage can skip them.

  python -m upgpt_jax.train.precompute --config configs/synthetic_tiny.py --out DIR [--dtype bfloat16]
      [--batch_size 64] [--config.data.num_examples=64 ...]
  python train.py --config configs/synthetic_tiny.py --workdir W --config.data.features_dir=DIR

Stored per example (upgpt_jax.data.features): the VAE posterior's moments (mean, logvar), not a
sample, so training still draws a fresh latent every step and equals training from pixels; the CLIP
text token states and per-part style image embeddings; mask, SMPL vector and style_present. The
VAE weights are those a training run of the same config starts from (its initial state's frozen
params, i.e. `config.seed`), the CLIP weights `config.model.clip` (path or seed); metadata.json
records the config fields this depends on and training refuses features made with others.

The split is read in order in fixed-size global batches over the mesh; the last, partial batch is
padded with copies of the last example and the copies are not written. Each process writes its own
shard; process 0 writes metadata.json last, once every shard is complete.
"""
from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from upgpt_jax import storage
from upgpt_jax.data.features import FeatureWriter, encoder_signature, write_metadata
from upgpt_jax.data.pipeline import InputPipeline, make_global_batch
from upgpt_jax.data.transforms import (
    FEATURE_RECORD_KEYS, Record, mask_coverage, mask_options, pixel_transform_from_config)
from upgpt_jax.tokenizer import load_clip_tokenizer
from upgpt_jax.train.data import training_source
from upgpt_jax.train.encoders import build_encoders, initial_vae

STORE_DTYPES = ("float32", "bfloat16", "float16")


class PaddedSource:
    """`source` lengthened to `length` records by repeating its last one (the padding of the last batch)."""

    def __init__(self, source: Sequence[Record], length: int):
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Record:
        return self.source[min(int(index), len(self.source) - 1)]


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order (replicated copies read once)."""
    pieces = {shard.index[0].start or 0: shard.data for shard in array.addressable_shards}
    return np.concatenate([np.asarray(pieces[start]) for start in sorted(pieces)])


def precompute(config: ml_collections.ConfigDict, out: str | pathlib.Path, *, dtype: str = "float32",
               batch_size: int | None = None) -> dict[str, Any]:
    """Write the features of `config`'s training split to `out`; returns a summary (count, bytes, seconds).

    `dtype` is the stored dtype of the moments and embeddings ("float32" is exact); `batch_size`
    the global batch of the encoders (default config.train.batch_size).
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"--dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    started = time.perf_counter()
    out = storage.path(out)  # local or gs://
    encoders = build_encoders(config)  # the VAE encoder and CLIP alone: no UNet, optimizer or train step
    vae_params = {"vae": initial_vae(config, encoders)}  # the VAE a training run of this config starts from
    source = training_source(config.data, config.model)
    count = len(source)
    global_batch = int(batch_size or config.train.batch_size)
    num_batches = math.ceil(count / global_batch)
    transform = pixel_transform_from_config(config.model, load_clip_tokenizer(), **mask_options(config.data))
    pipeline = InputPipeline(PaddedSource(source, num_batches * global_batch), global_batch, transform,
                             shuffle=False, num_epochs=1)
    process_index, process_count = pipeline.process_index, pipeline.process_count
    store_dtype = jnp.dtype(dtype)
    example = None
    with FeatureWriter(out, process_index, process_count) as writer, pipeline:
        progress = tqdm(enumerate(pipeline), total=num_batches, desc="precompute", unit="batch",
                        disable=process_index != 0, dynamic_ncols=True)
        for batch_index, local in progress:
            batch = make_global_batch(local, encoders.mesh, config.axis_rules)
            features = encoders.encode(vae_params, encoders.clip_params, batch)
            rows = {
                "latent_moments": local_rows(features["latent_moments"]).astype(store_dtype),
                "text_embedding": local_rows(features["text_embedding"]).astype(store_dtype),
                "style_embedding": local_rows(features["style_embedding"]).astype(store_dtype),
                "mask": mask_coverage(local["person_mask"], config.data.original_mask_quirk),
                "smpl": local["pose"],
                "style_present": local["style_present"],
            }
            first = batch_index * global_batch + process_index * pipeline.local_batch_size
            for row in range(max(0, min(pipeline.local_batch_size, count - first))):
                example = {key: rows[key][row] for key in FEATURE_RECORD_KEYS}
                writer.write(example)
        progress.close()
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("upgpt_jax precompute: shards written")
    seconds = time.perf_counter() - started
    if process_index == 0:
        write_metadata(out, count=count, global_batch_size=global_batch, process_count=process_count,
                       example=example, signature=encoder_signature(config),
                       info={"data.data_dir": config.data.data_dir, "dtype": dtype, "seconds": round(seconds, 1)})
    return {"count": count, "written": writer.count, "shard_bytes": writer.file_bytes,
            "record_bytes": writer.record_bytes, "seconds": seconds}


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    from upgpt_jax.compilation_cache import enable_compilation_cache

    enable_compilation_cache()  # shares compiled init and encoders with train.py runs of the same config
    summary = precompute(flags.FLAGS.config, flags.FLAGS.out, dtype=flags.FLAGS.dtype,
                         batch_size=flags.FLAGS.batch_size or None)
    print(f"wrote {summary['written']} of {summary['count']} examples to {flags.FLAGS.out} in "
          f"{summary['seconds']:.1f} s: {summary['shard_bytes'] / 2**20:.2f} MiB in this process's shard, "
          f"{summary['record_bytes'] / summary['written'] / 1024:.1f} KiB per example")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("out", None, "Output folder (ArrayRecord shards + metadata.json).")
    flags.DEFINE_enum("dtype", "float32", STORE_DTYPES, "Stored dtype of the moments and embeddings.")
    flags.DEFINE_integer("batch_size", 0, "Global batch of the encoders (0: config.train.batch_size).")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
