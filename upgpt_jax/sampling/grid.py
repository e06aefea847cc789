"""Labelled image grids (sample grids, training previews, eval's worst cases) whose text is read whole.

A label is drawn above its cell only when every label fits the cell's width (measured with the
font that draws it); otherwise cells carry numbers and a legend beside the grid spells the labels
out, so a 48-pixel cell never cuts "edited: top=text:a red top" to "edited: ~". Row labels (e.g.
eval's "example 13 / SSIM 0.42") go in a left margin as wide as the longest of them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Pillow's built-in Aileron at 11 px: at its default 10 px the hinting drops the colon between two
# letters ("top=text:a red top" reads "top=texta red top").
FONT = ImageFont.load_default(size=11)
LINE_HEIGHT = 14  # pixels per text line of FONT
_MEASURE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def text_size(text: str) -> tuple[int, int]:
    """(width, height) in pixels of `text` (several lines allowed) drawn with FONT from (0, 0)."""
    if not text:
        return 0, 0
    _, _, right, _ = _MEASURE.multiline_textbbox((0, 0), text, font=FONT)
    return int(np.ceil(right)), LINE_HEIGHT * (text.count("\n") + 1)


def label_layout(labels: Sequence[str], width: int) -> tuple[list[str], list[str]]:
    """(caption above each cell, legend lines): the labels themselves when all fit `width` pixels;
    else each distinct label's number (cells with the same label share it) and "N: label" lines."""
    if all(text_size(label)[0] <= width for label in labels):
        return list(labels), []
    numbers: dict[str, int] = {}
    for label in labels:
        if label and label not in numbers:
            numbers[label] = len(numbers) + 1
    return [str(numbers[label]) if label else "" for label in labels], [f"{n}: {label}" for label, n in numbers.items()]


def image_grid(images: Sequence[np.ndarray], labels: Sequence[str] | None = None, columns: int | None = None,
               pad: int = 2, row_labels: Sequence[str] | None = None) -> np.ndarray:
    """uint8 (H', W', 3): images of one size in rows of `columns`; `labels` (one per image) above the
    cells or as a legend on the right (see `label_layout`); `row_labels` (one per row) on the left."""
    images = [np.asarray(image) for image in images]
    height, width = images[0].shape[:2]
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    captions, legend = label_layout(labels, width) if labels else ([], [])
    label_height = LINE_HEIGHT if labels else 0
    margin = max((text_size(label)[0] for label in row_labels), default=0) + pad if row_labels else 0
    cell_h, cell_w = height + label_height + pad, width + pad
    grid_w, grid_h = margin + columns * cell_w + pad, rows * cell_h + pad
    legend_w = max((text_size(line)[0] for line in legend), default=-pad) + 2 * pad
    canvas = Image.new("RGB", (grid_w + legend_w, max(grid_h, len(legend) * LINE_HEIGHT + 2 * pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for index, image in enumerate(images):
        left, top = margin + pad + (index % columns) * cell_w, pad + (index // columns) * cell_h
        canvas.paste(Image.fromarray(image), (left, top + label_height))
        if captions:
            draw.text((left, top), captions[index], fill=(0, 0, 0), font=FONT)
    for row, label in enumerate(row_labels or ()):
        draw.multiline_text((pad, pad + row * cell_h + label_height), label, fill=(0, 0, 0), font=FONT)
    for line_index, line in enumerate(legend):
        draw.text((grid_w + pad, pad + line_index * LINE_HEIGHT), line, fill=(0, 0, 0), font=FONT)
    return np.asarray(canvas)
