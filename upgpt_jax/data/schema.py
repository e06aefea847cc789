"""The record every UPGPT dataset stores: one pose-transfer pair, as the original's DeepFashionPair.

A record is the *target* person (image, mask, SMPL pose, content text) plus the *source* person's
appearance (per-part style crops, and the source image and pose for pose-transfer evaluation).
Generation and editing use the same record: the styles then describe the person being drawn.
Both `synthetic_people` and `deepfashion_upgpt` write exactly these features, so the input
pipeline, training and evaluation never branch on the dataset.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from upgpt_jax.config_base import STYLE_PARTS

NUM_PARTS = len(STYLE_PARTS)


def record_spec(image_size: tuple[int, int], style_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Feature name -> (shape, numpy dtype); `()` with dtype `object` means a string."""
    height, width = image_size
    return {
        "image": ((height, width, 3), np.uint8),  # target RGB
        "mask": ((height, width, 1), np.uint8),  # target person mask, 0 or 255
        "smpl": ((85,), np.float32),  # target pose: 72 axis-angle, 10 betas, 3 camera
        "text": ((), object),  # content text describing the target
        "styles": ((NUM_PARTS, style_size, style_size, 3), np.uint8),  # source part crops, STYLE_PARTS order
        "style_present": ((NUM_PARTS,), np.bool_),  # False: that part is absent (a black crop is stored)
        "source_image": ((height, width, 3), np.uint8),
        "source_smpl": ((85,), np.float32),
        "id": ((), object),  # a stable name for the pair, e.g. "from.jpg->to.jpg"
        "identity": ((), np.int64),  # person identity (-1 when unknown)
    }


def check_record(record: Mapping[str, Any], image_size: tuple[int, int], style_size: int, source: str) -> None:
    """Raise ValueError naming `source` and every field that is missing or of the wrong shape/dtype."""
    problems = []
    for name, (shape, dtype) in record_spec(image_size, style_size).items():
        if name not in record:
            problems.append(f"{name}: missing")
            continue
        value = record[name]
        if dtype is object:
            if not isinstance(value, (str, bytes)):
                problems.append(f"{name}: expected a string, got {type(value).__name__}")
            continue
        value = np.asarray(value)
        if value.shape != shape or value.dtype != dtype:
            problems.append(f"{name}: expected {np.dtype(dtype).name}{list(shape)}, got {value.dtype.name}{list(value.shape)}")
    if problems:
        raise ValueError(f"{source}: bad record: " + "; ".join(problems))
