"""``deepfashion_upgpt``: DeepFashion In-shop pose-transfer pairs, from the original UPGPT layout.

The manual directory holds what the original loader (``ldm/data/deepfashion_inshop.py``) reads:

* ``img_256/<path>`` images (256x192, the original's ``resize_highres.py`` output; other
  sizes are resized to the config's size, masks with nearest neighbour);
* ``smpl_256/<stem>.p`` FrankMocap pickles (read with the restricted unpickler) and
  ``smpl_256/<stem>_mask.png`` person masks (0/1 or 0/255);
* ``styles/<stem>/<part>.jpg`` or the release's ``styles/<dir>/01/1_front/<part>.jpg``
  (224x224 crops; a missing part is stored black with ``style_present`` False, as the original);
* ``captions.json`` ({path: text}) and the pair CSVs (``from,to,...``) named by ``pair_files``.

``<path>`` is a CSV entry such as ``WOMEN/Skirts/id_00001883/01_1_front.jpg``, ``<stem>`` the
same without ``.jpg``. A record's target is ``to`` and its styles come from ``from``. A missing
or corrupt image, pickle, mask or caption raises :class:`BadExampleError` naming the file;
with ``skip_bad=True`` the pair is skipped and listed in ``skipped.json`` beside the dataset.

No TensorFlow is needed to build or read (ArrayRecord, PNG-encoded images, numpy
``as_data_source``); only ``as_dataset`` (tf.data) would need it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import tensorflow_datasets as tfds

from upgpt_jax.data.records import BadExampleError, RecordBuilder, deepfashion_record, load_captions, read_pairs

DEFAULT_PAIR_FILES = {"train": "pairs-train-all.csv", "test": "pairs-test-all.csv"}
SKIP_REPORT = "skipped.json"
_LAYOUT = __doc__


class DeepfashionUpgpt(RecordBuilder):
    """DeepFashion In-shop pose-transfer pairs in UPGPT's record layout (manual download).

    Args (besides TFDS's ``data_dir``, ``config``...): ``pair_files`` {split: CSV path,
    relative to the manual directory or absolute}, e.g. ``{"train": "mm-train-all.csv",
    "test": "mm-test-all.csv"}`` for the released model's multimodal pairs; ``skip_bad``
    skips pairs with bad files instead of failing (see :attr:`skipped`).
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

    def __init__(self, *, pair_files: Mapping[str, str] | None = None, skip_bad: bool = False, **kwargs: Any):
        self.pair_files = dict(pair_files or DEFAULT_PAIR_FILES)
        self.skip_bad = skip_bad
        self.skipped: list[dict[str, str]] = []  # {"split", "id", "error"} of each skipped pair
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        manual_dir = Path(dl_manager.manual_dir)
        captions = load_captions(manual_dir)
        self.skipped = []
        return {split: self._generate_examples(split, read_pairs(manual_dir / csv_name), manual_dir, captions)
                for split, csv_name in self.pair_files.items()}

    def _generate_examples(self, split: str, pairs: list[tuple[str, str]], manual_dir: Path,
                           captions: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
        config = self.builder_config
        seen, written = set(), 0
        for source_path, target_path in pairs:
            pair_id = f"{source_path}->{target_path}"
            if pair_id in seen:  # the CSVs repeat some rows; TFDS keys must be unique
                continue
            seen.add(pair_id)
            try:
                record = deepfashion_record(manual_dir, source_path, target_path, captions,
                                            config.image_size, config.style_size)
            except BadExampleError as error:
                if not self.skip_bad:
                    raise
                self.skipped.append({"split": split, "id": pair_id, "error": str(error)})
                continue
            yield pair_id, self._encode(record, f"deepfashion_upgpt {pair_id}")
            written += 1
        if written == 0:  # TFDS would fail with an opaque "No examples were yielded"
            raise BadExampleError(f"deepfashion_upgpt: split {split!r} has no usable pairs "
                                  f"({len(pairs)} CSV rows, every one skipped or none)")

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """Build as TFDS does; with ``skip_bad``, then write and log the report of skipped pairs."""
        already_built = self.data_path.exists()
        super().download_and_prepare(*args, **kwargs)
        if self.skip_bad and not already_built:
            report = {"num_skipped": len(self.skipped), "skipped": self.skipped}
            (Path(self.data_dir) / SKIP_REPORT).write_text(json.dumps(report, indent=1))
            logging.warning("deepfashion_upgpt: skipped %d pairs with bad files (see %s)",
                            len(self.skipped), Path(self.data_dir) / SKIP_REPORT)
