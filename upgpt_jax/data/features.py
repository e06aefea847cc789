"""Precomputed features on disk: ArrayRecord shards of msgpack records plus a metadata.json.

A features folder (written by `python -m upgpt_jax.train.precompute`) holds
  features-PPPPP-of-NNNNN.array_record  one shard per writing process, its rows of every global batch
  metadata.json                          count, layout, record shapes/dtypes, the encoder signature
Each record is a msgpack'd dict with the keys of transforms.FEATURE_RECORD_KEYS: latent_moments
(h, w, 2C) and the CLIP embeddings in the stored dtype, mask uint8 already at the latent size
(h, w, 1), 255 x the share of the latent pixel the person covers (0/255 with nearest resizing;
FeatureTransform's resize to that size is the identity, so the values equal a full-size mask's),
smpl float32 (85,), style_present bool (P,).

Rows are written in the order of the source, cut into global batches of `global_batch_size`; within
each batch process p writes the p-th contiguous slice. `FeatureSource[i]` undoes this, so record i is
always the features of source example i, whatever the number of writing processes.

The folder may be a gs:// URL: ArrayRecordWriter writes local files only, so each shard is written
to a temporary file and uploaded when closed; array_record's reader opens gs:// objects itself
(google-cloud-cpp: application default credentials, CLOUD_STORAGE_EMULATOR_ENDPOINT for an emulator).

The signature lists the config fields the stored values depend on (encoder shapes and weights, the
compute dtype, the dataset). Training from a folder whose signature differs from its config is
refused with the differing fields named: the features would silently belong to another model.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordWriter
from flax import serialization

from upgpt_jax import storage
from upgpt_jax.data.transforms import FEATURE_RECORD_KEYS

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


def shard_name(process_index: int, process_count: int) -> str:
    return f"features-{process_index:05d}-of-{process_count:05d}.array_record"


def encoder_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields precomputed features depend on, as dotted names -> JSON values.

    `seed` decides random VAE/CLIP weights (model.clip.path names loaded CLIP weights,
    train.init_vae_from trained VAE weights);
    `model.dtype` is the encoders' compute dtype. data.num_examples only counts for the
    in-memory synthetic source (a prepared data_dir has its own size).
    """
    fields = {
        "model.image_size": config.model.image_size,
        "model.latent_channels": config.model.latent_channels,
        "model.dtype": config.model.dtype,
        "model.vae": config.model.vae.to_dict(),
        "model.clip": config.model.clip.to_dict(),
        "seed": config.seed,
        "train.init_vae_from": config.train.init_vae_from,
        "data.dataset": config.data.dataset,
    }
    if not config.data.data_dir:
        fields["data.num_examples"] = config.data.num_examples
    resize = config.data.get("person_mask_resize", "nearest")
    if resize != "nearest":  # the stored masks' values; absent from (so valid for) folders written before it
        fields["data.person_mask_resize"] = resize
    return json.loads(json.dumps(fields))  # tuples -> lists, as they come back from metadata.json


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_signature(metadata: Mapping[str, Any], config: ml_collections.ConfigDict, folder: str | pathlib.Path) -> None:
    """Raise ValueError naming every field where the features' encoder signature differs from `config`."""
    stored, wanted = _flatten(metadata["signature"]), _flatten(encoder_signature(config))
    differing = [f"{name}: features {stored.get(name, '(absent)')!r}, config {wanted.get(name, '(absent)')!r}"
                 for name in sorted(set(stored) | set(wanted)) if stored.get(name) != wanted.get(name)]
    if differing:
        raise ValueError(f"the features in {folder} were precomputed with another encoder config; differing "
                         f"fields: {'; '.join(differing)}. Re-run `python -m upgpt_jax.train.precompute` with "
                         f"this config, or train with config.data.features_dir=''")


class FeatureWriter:
    """Writes this process's rows (FEATURE_RECORD_KEYS dicts of numpy arrays) to its shard."""

    def __init__(self, folder: str | pathlib.Path, process_index: int, process_count: int):
        self.folder = storage.path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / shard_name(process_index, process_count)
        self.count = 0
        self.record_bytes = 0  # serialised size (the file adds ArrayRecord's chunk headers and block padding)
        self.file_bytes: int | None = None  # the shard's size, once closed
        # ArrayRecordWriter writes local files only: a gs:// shard is written locally, uploaded on close.
        self._output = contextlib.ExitStack()
        self._local = self._output.enter_context(storage.local_output(self.path))
        self._writer = ArrayRecordWriter(self._local, "group_size:1")  # one record per chunk: random access

    def write(self, record: Mapping[str, np.ndarray]) -> None:
        if set(record) != set(FEATURE_RECORD_KEYS):
            raise KeyError(f"a feature record must have exactly the keys {FEATURE_RECORD_KEYS}, got {sorted(record)}")
        serialised = serialization.msgpack_serialize({key: np.asarray(record[key]) for key in record})
        self._writer.write(serialised)
        self.count += 1
        self.record_bytes += len(serialised)

    def close(self) -> None:
        if self.file_bytes is None:
            self._writer.close()
            self.file_bytes = os.path.getsize(self._local)
            self._output.close()

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_metadata(folder: str | pathlib.Path, *, count: int, global_batch_size: int, process_count: int,
                   example: Mapping[str, np.ndarray], signature: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """metadata.json: written last (by process 0), so its presence means the shards are complete."""
    metadata = {
        "format_version": FORMAT_VERSION,
        "count": int(count),
        "global_batch_size": int(global_batch_size),
        "process_count": int(process_count),
        "shards": [shard_name(index, process_count) for index in range(process_count)],
        "records": {key: {"shape": list(np.shape(value)), "dtype": np.asarray(value).dtype.name}
                    for key, value in example.items()},
        "signature": dict(signature),
        "info": dict(info),
    }
    (storage.path(folder) / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(folder: str | pathlib.Path) -> dict[str, Any]:
    path = storage.path(folder) / METADATA_FILE
    if not storage.path(folder).is_dir():
        raise FileNotFoundError(f"config.data.features_dir {str(folder)!r} is not a folder; write one with "
                                f"`python -m upgpt_jax.train.precompute --config ... --out {folder}`")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a finished precompute output (metadata.json "
                                f"is written last); re-run `python -m upgpt_jax.train.precompute`")
    metadata = json.loads(path.read_text())
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {metadata.get('format_version')!r}, expected {FORMAT_VERSION}")
    return metadata


class FeatureSource:
    """Random access to a features folder: `source[i]` is a FEATURE_RECORD_KEYS dict of numpy
    arrays, the features of source example i."""

    def __init__(self, folder: str | pathlib.Path):
        self.folder = storage.path(folder)  # local or gs:// (array_record reads gs:// objects itself)
        self.metadata = read_metadata(self.folder)
        self.count = int(self.metadata["count"])
        self.global_batch_size = int(self.metadata["global_batch_size"])
        self.local_batch_size = self.global_batch_size // int(self.metadata["process_count"])
        paths = [self.folder / name for name in self.metadata["shards"]]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"features shards missing: {missing}")
        self._records = ArrayRecordDataSource([str(path) for path in paths])
        self._shard_starts = np.cumsum([0] + [self._shard_rows(shard) for shard in range(len(paths))])
        if self._shard_starts[-1] != len(self._records):
            raise ValueError(f"{self.folder}: the shards hold {len(self._records)} records, metadata.json says "
                             f"{self.count}")

    def _shard_rows(self, shard: int) -> int:
        """Rows process `shard` wrote: its slice of every global batch, the padding dropped."""
        starts = np.arange(0, self.count, self.global_batch_size) + shard * self.local_batch_size
        return int(np.clip(self.count - starts, 0, self.local_batch_size).sum())

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.count:
            raise IndexError(f"feature record {index} is outside the {self.count} in {self.folder}")
        batch, offset = divmod(int(index), self.global_batch_size)
        shard, row = divmod(offset, self.local_batch_size)
        key = int(self._shard_starts[shard]) + batch * self.local_batch_size + row
        return serialization.msgpack_restore(self._records[key])
