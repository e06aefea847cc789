"""Turning sources into schema records, and the TFDS features both builders declare.

The `synthetic_people` and `deepfashion_upgpt` builders only enumerate their pairs; every
conversion into the record of :mod:`upgpt_jax.data.schema` lives here, so the two datasets
store byte-for-byte the same feature layout.

TFDS without TensorFlow (tensorflow-datasets 4.9.10, checked): writing and reading work with
``file_format="array_record"`` when images reach TFDS as *encoded PNG bytes* (numpy images go
through ``tf.image`` and need TensorFlow), so :func:`encode_record` PNG-encodes them. The
style crops are one zlib-compressed uint8 Tensor (a Sequence of Images would come back as a
Python list). Reading with ``as_data_source`` returns numpy arrays; Text comes back as bytes
and scalars as Python ints. ``as_dataset`` (tf.data) is what needs TensorFlow.
"""
from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from upgpt_jax.config_base import STYLE_PARTS
from upgpt_jax.data.schema import check_record, record_spec
from upgpt_jax.smpl.frankmocap import load_smpl_vector

# The original loader spells this part "accesories"; its style folders use that file name.
_STYLE_FILE_NAMES = {part: (part,) for part in STYLE_PARTS} | {"accessories": ("accesories", "accessories")}
_IDENTITY_PATTERN = re.compile(r"id_(\d+)")


@dataclasses.dataclass(eq=False)
class RecordConfig(tfds.core.BuilderConfig):
    """Image size (H, W) and style-crop side of the stored records."""

    image_size: tuple[int, int] = (64, 48)
    style_size: int = 32


RECORD_CONFIGS = (
    RecordConfig(name="64x48", image_size=(64, 48), style_size=32, description="64x48 images, 32x32 style crops"),
    RecordConfig(name="256x192", image_size=(256, 192), style_size=224,
                 description="256x192 images, 224x224 style crops (the released model's sizes)"),
)


class RecordBuilder(tfds.core.GeneratorBasedBuilder):
    """What both builders share: the size configs, the schema features, ArrayRecord output.

    Abstract (no split generators), so TFDS does not register it as a dataset.
    """

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = list(RECORD_CONFIGS)
    DEFAULT_CONFIG_NAME = "64x48"

    def __init_subclass__(cls, **kwargs: Any):
        # TFDS finds a packaged builder's source folder through the `importlib_resources`
        # backport (absent on Python >= 3.9 installs); the defining file is the same answer.
        super().__init_subclass__(**kwargs)
        cls.code_path = epath.Path(inspect.getfile(cls))

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")  # the only format that needs no TensorFlow
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config  # getdoc: data/<name>/'s undocumented `Builder`s describe as their parent
        return tfds.core.DatasetInfo(builder=self, features=tfds_features(config.image_size, config.style_size),
                                     description=(inspect.getdoc(type(self)) or "").split("\n\n")[0])

    def _encode(self, record: Mapping[str, Any], source: str) -> dict[str, Any]:
        return encode_record(record, self.builder_config.image_size, self.builder_config.style_size, source)


class BadExampleError(ValueError):
    """A required input file of one pair is missing or unreadable; the message names it."""


def _is_image(shape: tuple[int, ...], dtype: Any) -> bool:
    return dtype is np.uint8 and len(shape) == 3 and shape[-1] in (1, 3)


def tfds_features(image_size: tuple[int, int], style_size: int) -> tfds.features.FeaturesDict:
    """The FeaturesDict of :func:`record_spec`: PNG images, Text strings, numeric Tensors."""
    features = {}
    for name, (shape, dtype) in record_spec(image_size, style_size).items():
        if dtype is object:
            features[name] = tfds.features.Text()
        elif _is_image(shape, dtype):
            features[name] = tfds.features.Image(shape=shape, encoding_format="png")
        elif dtype is np.uint8:  # the (9, S, S, 3) style crops: lossless, one array, no TF
            features[name] = tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
        else:
            features[name] = tfds.features.Tensor(shape=shape, dtype=dtype)
    return tfds.features.FeaturesDict(features)


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_record(record: Mapping[str, Any], image_size: tuple[int, int], style_size: int,
                  source: str) -> dict[str, Any]:
    """Check ``record`` against the schema, then PNG-encode its images for TFDS (no TF needed)."""
    check_record(record, image_size, style_size, source)
    spec = record_spec(image_size, style_size)
    return {name: _png_bytes(np.asarray(value)) if _is_image(*spec[name]) else value for name, value in record.items()}


def _mask_channel(mask: np.ndarray) -> np.ndarray:
    """A (H, W) or (H, W, 1) person mask (bool, 0/1 or 0/255) as uint8 (H, W, 1) of 0 or 255."""
    mask = np.asarray(mask)
    return np.where(mask.reshape(mask.shape[:2] + (1,)) > 0, 255, 0).astype(np.uint8)


def record_from_pair(pair: Mapping[str, Mapping[str, Any]], pair_id: str) -> dict[str, Any]:
    """The record of a synthetic pair ``{"source": example, "target": example}``: draw the
    target (image, mask, pose, text) in the source's clothes (styles)."""
    source, target = pair["source"], pair["target"]
    return {
        "image": target["image"],
        "mask": _mask_channel(target["mask"]),
        "smpl": np.asarray(target["smpl"], np.float32),
        "text": target["text"],
        "styles": source["styles"],
        "style_present": np.asarray(source["style_present"], np.bool_),
        "source_image": source["image"],
        "source_smpl": np.asarray(source["smpl"], np.float32),
        "id": pair_id,
        "identity": np.int64(target["identity"]),
    }


# --- DeepFashion, in the original's layout (ldm/data/deepfashion_inshop.py) ---------------------


def synthetic_pair_record(pair_index: int, split: str, image_size: tuple[int, int], style_size: int,
                          seed: int = 0, colour_free_text_fraction: float = 0.0) -> tuple[str, dict[str, Any]]:
    """(pair id, record) of `synthetic_people` pair `pair_index` of `split`.

    Pair k takes the split's identity j = k % n (n identities) drawn in examples 2 n m + j (source)
    and 2 n m + n + j (target), m = k // n: every example is drawn once and identities recur in new
    poses. The TFDS builder stores exactly these records; training renders them in memory.
    `colour_free_text_fraction` (config data.colour_free_text_fraction) gives that fraction of the
    pairs, chosen per pair index (synthetic.uses_colour_free_text), the text without colour words
    (synthetic.describe_colour_free) instead of the stored one; images and crops are unchanged.
    """
    from upgpt_jax.data.synthetic import (  # the renderer, only when used
        describe_colour_free, identity_from_id, make_example, split_identity_ids, uses_colour_free_text)

    num_ids = len(split_identity_ids(split))
    first = 2 * num_ids * (pair_index // num_ids) + pair_index % num_ids
    pair = {"source": make_example(first, split, image_size, style_size, seed),
            "target": make_example(first + num_ids, split, image_size, style_size, seed, with_styles=False)}
    pair_id = f"{split}/{first}->{first + num_ids}"
    record = record_from_pair(pair, pair_id)
    if uses_colour_free_text(pair_index, colour_free_text_fraction, seed):
        record["text"] = describe_colour_free(identity_from_id(int(record["identity"]), seed))
    return pair_id, record


def open_rgb(path: Path, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """An image file as uint8 (H, W, 3) resized to ``size`` = (H, W); errors name the file."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != size[::-1]:
                image = image.resize(size[::-1], resample)
            return np.asarray(image, np.uint8)
    except (OSError, ValueError) as error:  # missing, truncated, not an image
        raise BadExampleError(f"{path}: cannot read image ({error})") from error


def open_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L") if image.mode not in ("L", "P", "1") else image)
    except (OSError, ValueError) as error:
        raise BadExampleError(f"{path}: cannot read person mask ({error})") from error
    mask = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8))  # FrankMocap writes 0/1 palette masks
    if mask.size != size[::-1]:
        mask = mask.resize(size[::-1], Image.Resampling.NEAREST)
    return _mask_channel(np.asarray(mask))


def _load_smpl(path: Path) -> np.ndarray:
    try:
        return load_smpl_vector(path)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as error:  # missing, corrupt, refused
        raise BadExampleError(f"{path}: cannot read FrankMocap pickle ({error})") from error


def style_dirs(manual_dir: Path, path: str) -> tuple[Path, Path]:
    """Where the style crops of image ``path`` may be: ``styles/<path without .jpg>/`` or the
    original release's ``styles/<dir>/<clothes no>/<pose>/`` (``01_1_front`` -> ``01/1_front``)."""
    stem = Path(path).with_suffix("")
    head, _, tail = stem.name.partition("_")
    return manual_dir / "styles" / stem, manual_dir / "styles" / stem.parent / head / tail


def load_styles(manual_dir: Path, path: str, style_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(9, S, S, 3) uint8 crops and (9,) bool presence; a missing part is black and absent."""
    return load_style_folder(next((d for d in style_dirs(manual_dir, path) if d.is_dir()), None), style_size)


def load_style_folder(folder: Path | None, style_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The crops ``<part>.jpg`` of one style folder (the original's names), as `load_styles`."""
    styles = np.zeros((len(STYLE_PARTS), style_size, style_size, 3), np.uint8)
    present = np.zeros(len(STYLE_PARTS), np.bool_)
    for index, part in enumerate(STYLE_PARTS):
        files = [folder / f"{name}.jpg" for name in _STYLE_FILE_NAMES[part]] if folder else []
        found = next((f for f in files if f.is_file()), None)
        if found is not None:
            styles[index] = open_rgb(found, (style_size, style_size), Image.Resampling.BICUBIC)
            present[index] = True
    return styles, present


def load_captions(manual_dir: Path) -> dict[str, str]:
    """``captions.json``: {image path: content text}."""
    path = manual_dir / "captions.json"
    try:
        captions = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{path}: cannot read the captions file ({error})") from error
    if not isinstance(captions, dict):
        raise ValueError(f"{path}: expected a JSON object {{image path: text}}")
    return captions


def identity_of(path: str) -> int:
    """The DeepFashion person id in ``.../id_00001883/...`` (1883), or -1."""
    match = _IDENTITY_PATTERN.search(path)
    return int(match.group(1)) if match else -1


def deepfashion_record(manual_dir: Path, source_path: str, target_path: str, captions: Mapping[str, str],
                       image_size: tuple[int, int], style_size: int) -> dict[str, Any]:
    """The record of one CSV row (``from`` = source, ``to`` = target) from the original layout:
    ``img_256/<path>``, ``smpl_256/<stem>.p`` and ``<stem>_mask.png``, ``styles/...``."""
    if target_path not in captions:
        raise BadExampleError(f"{manual_dir / 'captions.json'}: no caption for {target_path!r}")
    target_pose = manual_dir / "smpl_256" / Path(target_path).with_suffix("")
    source_pose = manual_dir / "smpl_256" / Path(source_path).with_suffix("")
    styles, present = load_styles(manual_dir, source_path, style_size)
    lanczos = Image.Resampling.LANCZOS
    return {
        "image": open_rgb(manual_dir / "img_256" / target_path, image_size, lanczos),
        "mask": open_mask(target_pose.with_name(target_pose.name + "_mask.png"), image_size),
        "smpl": _load_smpl(target_pose.with_suffix(".p")),
        "text": str(captions[target_path]),
        "styles": styles,
        "style_present": present,
        "source_image": open_rgb(manual_dir / "img_256" / source_path, image_size, lanczos),
        "source_smpl": _load_smpl(source_pose.with_suffix(".p")),
        "id": f"{source_path}->{target_path}",
        "identity": np.int64(identity_of(target_path)),
    }


def read_pairs(csv_path: str | os.PathLike) -> list[tuple[str, str]]:
    """The (from, to) columns of a pair CSV such as ``pairs-train-all.csv``."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read the pair CSV ({error})") from error
    if rows and not {"from", "to"} <= set(rows[0]):
        raise ValueError(f"{path}: expected 'from' and 'to' columns, got {sorted(rows[0])}")
    return [(row["from"], row["to"]) for row in rows]
