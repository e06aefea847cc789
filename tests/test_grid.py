"""Grid labels are read whole: above the cell when they fit, else numbered with a legend; worst.png
is a table with column headers and row labels that name the metric."""
import numpy as np

from upgpt_jax.eval.protocols import EvalResult
from upgpt_jax.eval.report import worst_grid, write_report
from upgpt_jax.sampling.grid import LINE_HEIGHT, image_grid, label_layout, text_size

CELL = np.zeros((64, 48, 3), np.uint8)  # synthetic_tiny's image size


def _ink(grid: np.ndarray, rows: slice, columns: slice) -> bool:
    return bool((grid[rows, columns] < 128).any())


def test_short_labels_are_drawn_whole_above_their_cells():
    captions, legend = label_layout(["seed 0", "seed 1"], 48)
    assert captions == ["seed 0", "seed 1"] and legend == []
    assert all(text_size(caption)[0] <= 48 for caption in captions)


def test_long_labels_become_numbers_and_a_legend_with_the_whole_text():
    labels = ["ground truth", "unedited", "edited: top=text:a red top", "unedited"]
    assert text_size("edited: top=text:a red top")[0] > 48  # would have been cut to "edited: ~"
    captions, legend = label_layout(labels, 48)
    assert captions == ["1", "2", "3", "2"]  # equal labels share a number
    assert legend == ["1: ground truth", "2: unedited", "3: edited: top=text:a red top"]
    assert all(text_size(caption)[0] <= 48 for caption in captions)

    grid = image_grid([CELL] * 4, labels, columns=4, pad=2)
    grid_width = 4 * 50 + 2
    assert grid.shape[1] >= grid_width + text_size(legend[-1])[0]  # the legend fits beside the grid
    assert _ink(grid, slice(0, 3 * LINE_HEIGHT), slice(grid_width, None))  # and is drawn there


def test_worst_png_has_column_headers_and_row_labels_naming_the_metric(tmp_path):
    rows = [("example 13\npose_transfer\nSSIM 0.42", [CELL + 255, CELL + 255]),
            ("example 2\npose_transfer\nSSIM 0.51", [CELL + 255, CELL + 255])]
    result = EvalResult("synthetic", {}, worst=rows, worst_columns=["ground truth", "pose_transfer"])
    grid = worst_grid(result)
    margin = text_size(rows[0][0])[0]
    assert text_size(rows[0][0])[1] <= 64  # the three lines fit beside their row
    assert grid.shape[1] >= margin + 2 * 50  # the row labels get their own margin, not a cell
    assert _ink(grid, slice(LINE_HEIGHT, LINE_HEIGHT + 64), slice(0, margin))  # first row's label
    assert _ink(grid, slice(0, LINE_HEIGHT), slice(margin, margin + 100))  # headers above the first row
    assert not _ink(grid, slice(LINE_HEIGHT + 2, LINE_HEIGHT + 64), slice(margin + 4, margin + 100))  # white cells
    written = write_report(result, tmp_path)
    assert written["worst"].is_file()
