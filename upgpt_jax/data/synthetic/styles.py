"""The 9 per-part style images UPGPT's style encoder sees, cut from a rendered raster.

DeepFashion's style crops (``styles/<path>/<part>.jpg``) are a human parser's segment of
each part, cropped to its bounding box, with every other pixel black, on a square canvas;
parts the parser did not find are missing and the loader feeds a black image. Here the
renderer's own part map is the parser: a part's crop keeps the pixels where that part is
the frontmost drawn (so an arm in front of the top leaves a black hole, as in DeepFashion),
scaled to fit ``style_size`` with its aspect ratio kept and centred. The background "crop" is
the scene without the person: the plain background colour. A part with fewer than
``MIN_PART_PIXELS`` visible pixels (a face seen from behind) is absent: black and flagged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from upgpt_jax.data.synthetic.mannequin import PART_INDEX, PARTS
from upgpt_jax.data.synthetic.raster import Raster

MIN_PART_PIXELS = 4


def _fit(crop: np.ndarray, size: int) -> np.ndarray:
    """Scale ``crop`` (h, w, 3) uint8 so its longer side is ``size``; centre it on black."""
    height, width = crop.shape[:2]
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    resized = np.asarray(Image.fromarray(crop).resize((new_width, new_height), Image.BILINEAR))
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas[top:top + new_height, left:left + new_width] = resized
    return canvas


def style_crops(raster: Raster, background, style_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(styles uint8 (9, S, S, 3), present bool (9,)) in the order of ``PARTS``."""
    styles = np.zeros((len(PARTS), style_size, style_size, 3), np.uint8)
    present = np.zeros(len(PARTS), bool)
    image = np.clip(np.rint(raster.image), 0, 255).astype(np.uint8)
    for name in ("face", "hair", "top", "bottom", "shoes"):
        index = PART_INDEX[name]
        selected = raster.part == index
        if np.count_nonzero(selected) < MIN_PART_PIXELS:
            continue
        rows, cols = np.flatnonzero(selected.any(axis=1)), np.flatnonzero(selected.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        styles[index] = _fit(np.where(selected[box][..., None], image[box], 0).astype(np.uint8), style_size)
        present[index] = True
    styles[PART_INDEX["background"]] = np.asarray(background, np.uint8)
    present[PART_INDEX["background"]] = True
    return styles, present
