"""TensorBoard event files written without TensorFlow (or protobuf, or tensorboardX).

TensorBoard reads a directory of `events.out.tfevents.*` files. Each is a TFRecord file: a
sequence of records framed as (uint64 length, masked CRC-32C of the length, data, masked
CRC-32C of the data), each record one serialized `tensorflow.Event` protobuf. The first
event carries only `file_version = "brain.Event:2"`; the others carry a `Summary` of
scalar (`simple_value`) or PNG image values. We need only a handful of protobuf fields, so
they are encoded by hand here rather than pulling TensorFlow or protobuf in at run time.

Every call appends one whole record and flushes it, so a live TensorBoard sees progress
at once and a crash loses at most the record being written (TensorBoard stops cleanly at a
truncated last record). A gs:// (any URL) logdir cannot be appended to: the file is re-uploaded
whole at most every `storage.UPLOAD_EVERY_S` seconds and on flush/close (upgpt_jax.storage).
"""
from __future__ import annotations

import io
import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from upgpt_jax import storage

FILE_VERSION = "brain.Event:2"

# --- CRC-32C (Castagnoli), as TFRecord framing requires ---------------------------------

_CASTAGNOLI_REVERSED = 0x82F63B78
_CRC_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI_REVERSED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (table-driven, ~5 MB/s: fine for scalars and the odd PNG)."""
    crc = _U32
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: bytes) -> int:
    """The rotated-and-offset CRC TFRecord stores (so CRCs of data holding CRCs stay robust)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & _U32


def tfrecord(data: bytes) -> bytes:
    """`data` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# --- The few protobuf fields an Event needs ------------------------------------------------
# Wire types: 0 varint, 1 64-bit, 2 length-delimited, 5 32-bit.

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are sent as their 10-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _double_field(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           summary_values: Sequence[bytes] = ()) -> bytes:
    """Event{wall_time=1 double, step=2 int64, file_version=3 string, summary=5 Summary{value=1}}."""
    event = _double_field(1, wall_time) + _int_field(2, int(step))  # int(): numpy or jax scalar steps
    if file_version is not None:
        event += _bytes_field(3, file_version.encode())
    if summary_values:
        event += _bytes_field(5, b"".join(_bytes_field(1, value) for value in summary_values))
    return event


def _scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value{tag=1, simple_value=2 float}."""
    return _bytes_field(1, tag.encode()) + _float_field(2, value)


_COLORSPACES = {1: 1, 3: 3}  # channels -> Summary.Image colorspace (1 grayscale, 3 RGB)


def _image_value(tag: str, image: np.ndarray) -> bytes:
    """Summary.Value{tag=1, image=4 Image{height=1, width=2, colorspace=3, encoded_image_string=4}}."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in _COLORSPACES:
        raise ValueError(f"image {tag!r}: expected a uint8 array of shape (H, W, 3) or (H, W, 1), "
                         f"got {image.dtype} {image.shape}")
    height, width, channels = image.shape
    png = io.BytesIO()
    Image.fromarray(image[..., 0] if channels == 1 else image).save(png, format="PNG")
    encoded = (_int_field(1, height) + _int_field(2, width) + _int_field(3, _COLORSPACES[channels])
               + _bytes_field(4, png.getvalue()))
    return _bytes_field(1, tag.encode()) + _bytes_field(4, encoded)


# --- The writer ------------------------------------------------------------------------------

_writer_ids = itertools.count()


class SummaryWriter:
    """Appends scalars and images to a new TensorBoard event file in `logdir`.

    With `enabled=False` (every process but the first in a multi-host run) nothing is
    created and every call is a no-op, so callers need no `if process_index == 0` guards.
    The file name follows TensorFlow's (`events.out.tfevents.<time>.<host>.<pid>.<n>`), so
    writers started in the same second, by restarts or in one process, never share a file.
    """

    def __init__(self, logdir: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.path: storage.AnyPath | None = None
        if not enabled:
            return
        logdir = storage.path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_writer_ids)}"
        self.path = logdir / name
        self._file = storage.AppendFile(self.path, exclusive=True)  # gs:// too (uploaded every ~30 s)
        self._write(_event(now, 0, file_version=FILE_VERSION))

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        """One event at `step` holding every value that is not None (e.g. a metric not computed yet)."""
        if not self.enabled:
            return
        summary_values = [_scalar_value(tag, float(value)) for tag, value in values.items() if value is not None]
        if summary_values:
            self._write(_event(time.time(), step, summary_values=summary_values))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image` (uint8, (H, W, 3) RGB or (H, W, 1) grayscale) as a PNG under `tag`."""
        if not self.enabled:
            return
        self._write(_event(time.time(), step, summary_values=[_image_value(tag, np.asarray(image))]))

    def flush(self) -> None:
        """Push buffered bytes to the OS (each call already does; this is for callers that want to be sure),
        or to the object store now when the logdir is a URL."""
        if self.enabled:
            self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent); writing afterwards raises rather than dropping data."""
        if self.enabled:
            self._file.close()

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _write(self, event: bytes) -> None:
        # One write of the whole record, flushed (AppendFile.write): a reader never waits on a half-buffered record.
        self._file.write(tfrecord(event))
