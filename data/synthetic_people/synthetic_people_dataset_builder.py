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

from typing import Any, Iterator

import tensorflow_datasets as tfds

from upgpt_jax.data.records import RecordBuilder, record_from_pair
from upgpt_jax.data.synthetic import make_example, split_identity_ids
from upgpt_jax.data.synthetic.generate import DEFAULT_NUM_IDENTITIES

DEFAULT_NUM_EXAMPLES = 10_000  # train pairs; test gets a tenth


class SyntheticPeople(RecordBuilder):
    """Synthetic pose-transfer pairs of procedural clothed mannequins (train/test by identity).

    Args (besides TFDS's ``data_dir``, ``config``...): ``num_examples`` train pairs (test gets
    ``max(1, num_examples // 10)``); ``seed`` of the identities and poses. Changing them does
    not change the output directory: prepare into a fresh ``data_dir``.
    """

    def __init__(self, *, num_examples: int = DEFAULT_NUM_EXAMPLES, seed: int = 0, **kwargs: Any):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        self.num_examples = num_examples
        self.seed = seed
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {"train": self._generate_examples("train", self.num_examples),
                "test": self._generate_examples("test", max(1, self.num_examples // 10))}

    def _generate_examples(self, split: str, num_pairs: int) -> Iterator[tuple[str, dict[str, Any]]]:
        config = self.builder_config
        num_ids = len(split_identity_ids(split, DEFAULT_NUM_IDENTITIES))
        for k in range(num_pairs):
            first = 2 * num_ids * (k // num_ids) + k % num_ids
            pair = {role: make_example(index, split, config.image_size, config.style_size, self.seed)
                    for role, index in (("source", first), ("target", first + num_ids))}
            pair_id = f"{split}/{first}->{first + num_ids}"
            yield pair_id, self._encode(record_from_pair(pair, pair_id), f"synthetic_people {pair_id}")
