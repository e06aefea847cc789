"""``synthetic_people``: pose-transfer pairs of procedural mannequins, built with no download.

Each record is one identity in two poses: the source's style crops and image, the target's
image, mask, SMPL pose and text (see :mod:`upgpt_jax.data.schema`). Pair ``k`` of a split
takes that split's identity ``j = k % n`` (``n`` identities, see
:func:`upgpt_jax.data.synthetic.split_identity_ids`; test identities never appear in train)
and renders it with examples ``2 n m + j`` (source) and ``2 n m + n + j`` (target),
``m = k // n``: every example is drawn once, and each identity recurs in new poses.

No TensorFlow is needed to build or read (ArrayRecord, PNG-encoded images, numpy
``as_data_source``); only ``as_dataset`` (tf.data) would need it.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from upgpt_jax.data.records import RecordBuilder, encode_record, synthetic_pair_record
from upgpt_jax.data.synthetic.generate import map_in_chunks

DEFAULT_NUM_EXAMPLES = 10_000  # train pairs; test gets a tenth


def pair_example(pair_index: int, split: str, image_size: tuple[int, int], style_size: int,
                 seed: int) -> tuple[str, dict[str, Any]]:
    """(key, PNG-encoded record) of pair ``pair_index`` of ``split``; runs in the build's workers."""
    pair_id, record = synthetic_pair_record(pair_index, split, image_size, style_size, seed)
    return pair_id, encode_record(record, image_size, style_size, f"synthetic_people {pair_id}")


class SyntheticPeople(RecordBuilder):
    """Synthetic pose-transfer pairs of procedural clothed mannequins (train/test by identity).

    Args (besides TFDS's ``data_dir``, ``config``...): ``num_examples`` train pairs (test gets
    ``max(1, num_examples // 10)``); ``seed`` of the identities and poses; ``workers``, the
    processes that render and PNG-encode (default: all cores; the records are identical
    whatever the count). Changing ``num_examples`` or ``seed`` does not change the output
    directory: prepare into a fresh ``data_dir``.
    """

    def __init__(self, *, num_examples: int = DEFAULT_NUM_EXAMPLES, seed: int = 0, workers: int | None = None,
                 **kwargs: Any):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.num_examples = num_examples
        self.seed = seed
        self.workers = workers or os.cpu_count() or 1
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {"train": self._generate_examples("train", self.num_examples),
                "test": self._generate_examples("test", max(1, self.num_examples // 10))}

    def _generate_examples(self, split: str, num_pairs: int) -> Iterator[tuple[str, dict[str, Any]]]:
        config = self.builder_config
        example = functools.partial(pair_example, split=split, image_size=config.image_size,
                                    style_size=config.style_size, seed=self.seed)
        yield from map_in_chunks(example, range(num_pairs), self.workers, chunk_size=32)
