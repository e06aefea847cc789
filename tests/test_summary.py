"""Our event files (tensorboardX's protos, our framing and file), read back by TensorBoard's own reader.

TensorBoard is forced onto its TensorFlow stub, whose record reader checks both CRCs of
every record in pure Python, so these tests are independent of the writer's encoding.
"""
import io
import os
import sys
import time
import types

import numpy as np
import pytest
from PIL import Image

# An importable `tensorboard.compat.notf` makes TensorBoard use its stub instead of importing TensorFlow.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

from tensorboard.backend.event_processing import event_accumulator, event_file_loader  # noqa: E402
from tensorboard.compat import tf as tensorboard_tf  # noqa: E402

from upgpt_jax.train.summary import FILE_VERSION, SummaryWriter  # noqa: E402


def test_tensorboard_reads_without_tensorflow():
    assert tensorboard_tf.__version__ == "stub"
    assert "tensorflow" not in sys.modules


def _read_events(path):
    return list(event_file_loader.EventFileLoader(str(path)).Load())


def test_scalars_and_images_read_back_by_tensorboard(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (9, 5, 1), dtype=np.uint8)
    # Multi-byte varints (300, 2**40) and a value that is None (skipped) at some steps.
    steps = [0, 1, 300, 2**40]
    logged = {step: {"train/loss": float(rng.normal()), "lr": 1e-4 * (i + 1), "grad_norm": None if i % 2 else 3.5}
              for i, step in enumerate(steps)}

    logdir = tmp_path / "run"
    before = time.time()
    writer = SummaryWriter(logdir)
    for step in steps:
        writer.scalars(step, logged[step])
    writer.image(7, "samples/rgb", rgb)
    writer.image(8, "samples/gray", gray)
    after = time.time()
    assert writer.path.parent == logdir and writer.path.name.startswith("events.out.tfevents.")
    with SummaryWriter(logdir) as second:  # same second, same directory: a file of its own
        assert second.path != writer.path

    # Read while the writer is still open: a live TensorBoard must see everything written so far.
    events = _read_events(writer.path)
    assert events[0].file_version == FILE_VERSION
    assert all(before <= event.wall_time <= after for event in events)
    assert [event.wall_time for event in events] == sorted(event.wall_time for event in events)
    assert [event.step for event in events] == [0, *steps, 7, 8]

    accumulator = event_accumulator.EventAccumulator(
        str(writer.path), size_guidance=event_accumulator.STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    expected_tags = {"train/loss", "lr", "grad_norm"}
    assert set(accumulator.Tags()["scalars"]) == expected_tags
    for tag in expected_tags:
        read = accumulator.Scalars(tag)
        expected = [(step, values[tag]) for step, values in logged.items() if values[tag] is not None]
        assert [event.step for event in read] == [step for step, _ in expected]
        assert [event.value for event in read] == [float(np.float32(value)) for _, value in expected]
        assert all(before <= event.wall_time <= after for event in read)

    assert set(accumulator.Tags()["images"]) == {"samples/rgb", "samples/gray"}
    for tag, image, step in (("samples/rgb", rgb, 7), ("samples/gray", gray, 8)):
        (read,) = accumulator.Images(tag)
        assert (read.step, read.height, read.width) == (step, image.shape[0], image.shape[1])
        decoded = np.asarray(Image.open(io.BytesIO(read.encoded_image_string)))
        np.testing.assert_array_equal(decoded.reshape(image.shape), image)
        assert decoded.ndim == (3 if image.shape[-1] == 3 else 2)
    writer.close()
    writer.close()
    with pytest.raises(ValueError):
        writer.scalars(9, {"lr": 1.0})


def test_truncated_or_corrupted_tail_keeps_earlier_events(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        writer.scalars(0, {"loss": 0.0})
        writer.scalars(1, {"loss": 1.0})
        size_before_last = writer.path.stat().st_size  # every call is flushed
        writer.scalars(2, {"loss": 2.0})
    data = writer.path.read_bytes()
    assert [event.step for event in _read_events(writer.path)[1:]] == [0, 1, 2]

    truncated = tmp_path / "truncated" / writer.path.name
    truncated.parent.mkdir()
    truncated.write_bytes(data[:(size_before_last + len(data)) // 2])
    assert [event.step for event in _read_events(truncated)[1:]] == [0, 1]

    corrupted = tmp_path / "corrupted" / writer.path.name
    corrupted.parent.mkdir()
    flipped = bytearray(data)
    flipped[-6] ^= 0x01  # a byte of the last record's float value
    corrupted.write_bytes(bytes(flipped))
    assert [event.step for event in _read_events(corrupted)[1:]] == [0, 1]


def test_disabled_writer_touches_nothing(tmp_path):
    logdir = tmp_path / "not_created"
    with SummaryWriter(logdir, enabled=False) as writer:
        writer.scalars(0, {"loss": 1.0})
        writer.image(0, "x", np.zeros((2, 2, 3), np.uint8))
        writer.flush()
    assert writer.path is None and not os.path.exists(logdir)


@pytest.mark.parametrize("image", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                   np.zeros((4, 4, 4), np.uint8)])
def test_bad_image_is_rejected(tmp_path, image):
    with SummaryWriter(tmp_path) as writer, pytest.raises(ValueError, match="samples"):
        writer.image(0, "samples", image)
