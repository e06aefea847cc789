"""Paths that may be object-store URLs (gs://, s3://, ...) as well as local files.

Every path the entry points take (`--workdir`, `--out`, `--params`, `data.data_dir`,
`data.features_dir`, `train.init_vae_from`, ...) goes through `path()`: a local path stays a
`pathlib.Path` (unchanged behaviour, and what PIL, array_record and imageio expect), a URL becomes
an `etils.epath.Path` with the same API (`/`, exists, is_dir, mkdir, open, read_text, write_bytes,
iterdir), which reaches gs:// through gcsfs (`pathlib.Path("gs://b/x")` would collapse the `//`).
orbax writes its arrays through tensorstore's own GCS client and takes either kind of path.

What object stores lack, and what stands in for it here:
- a current directory: a URL is absolute already (epath's `absolute()` would prefix the cwd to it),
  see `absolute()`;
- appending: an object is written whole. `AppendFile` keeps a local copy and re-uploads the whole
  object at most every `UPLOAD_EVERY_S` seconds and on flush/close, as TensorFlow's GCS file system
  does for event files; a crash loses what was written since the last upload (locally, nothing);
- writers that want a local file name (ArrayRecordWriter, imageio's ffmpeg): `local_output()` and
  `local_folder()` hand them a temporary local file or folder and upload it when they are done.
"""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Union

import numpy as np
from etils import epath
from PIL import Image

AnyPath = Union[pathlib.Path, epath.Path]
# Seconds between two uploads of an `AppendFile` on an object store (each rewrites the whole object).
UPLOAD_EVERY_S = 30.0
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value: str | os.PathLike) -> bool:
    """Whether `value` names an object-store location (scheme://...) rather than a local file."""
    return bool(_URL.match(os.fspath(value)))


def path(value: str | os.PathLike) -> AnyPath:
    """`value` as a path object: `pathlib.Path` when local, `epath.Path` when a URL."""
    if isinstance(value, pathlib.Path):
        return value
    text = os.fspath(value)
    return epath.Path(text) if is_url(text) else pathlib.Path(text)


def absolute(value: str | os.PathLike) -> AnyPath:
    """`path(value)` made absolute (local paths only: a URL is absolute already)."""
    result = path(value)
    return result.absolute() if isinstance(result, pathlib.Path) else result


def save_image(image: np.ndarray | Image.Image, destination: str | os.PathLike, **options: Any) -> None:
    """`image` saved to `destination` (format from its suffix, as PIL's `save` picks it), local or remote."""
    destination = path(destination)
    image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if isinstance(destination, pathlib.Path):
        image.save(destination, **options)
        return
    encoded = io.BytesIO()
    image.save(encoded, format=Image.registered_extensions()[destination.suffix.lower()], **options)
    destination.write_bytes(encoded.getvalue())


def check_writable(folder: str | os.PathLike) -> None:
    """Create `folder` if needed and write and delete a small file in it, so that an output folder
    that cannot be written is found before the work whose results it would hold; raises OSError."""
    folder = path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def upload(local: str | os.PathLike, destination: AnyPath) -> None:
    """Copy the local file `local` to `destination` (streamed: the file may be large)."""
    with open(local, "rb") as source, destination.open("wb") as target:
        shutil.copyfileobj(source, target, length=8 << 20)


@contextlib.contextmanager
def local_output(destination: str | os.PathLike) -> Iterator[str]:
    """A local file name for a writer that cannot write to `destination` itself: `destination` when
    local; else a temporary file, uploaded to `destination` when the block ends without an error."""
    destination = path(destination)
    if isinstance(destination, pathlib.Path):
        yield str(destination)
        return
    with tempfile.TemporaryDirectory(prefix="upgpt_upload_") as folder:
        local = os.path.join(folder, destination.name)
        yield local
        upload(local, destination)


@contextlib.contextmanager
def local_folder(destination: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local folder for code that writes and re-reads files with local-only libraries: `destination`
    itself when local; else a temporary folder whose files are uploaded under `destination` (same
    relative names) when the block ends without an error."""
    destination = path(destination)
    if isinstance(destination, pathlib.Path):
        yield destination
        return
    with tempfile.TemporaryDirectory(prefix="upgpt_upload_") as folder:
        yield pathlib.Path(folder)
        upload_tree(folder, destination)


@contextlib.contextmanager
def local_copy(folder: str | os.PathLike) -> Iterator[pathlib.Path]:
    """`folder` for a reader that only reads local files: itself when local; else a temporary folder
    holding every file under it (same relative names), deleted when the block ends. A URL folder
    without files raises FileNotFoundError naming it."""
    source = path(folder)
    if isinstance(source, pathlib.Path):
        yield source
        return
    files = list(_files_under(source)) if source.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{source} holds no files (or does not exist)")
    with tempfile.TemporaryDirectory(prefix="upgpt_download_") as local:
        for item in files:
            target = pathlib.Path(local, *item.relative_to(source).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with item.open("rb") as reader, open(target, "wb") as writer:
                shutil.copyfileobj(reader, writer, length=8 << 20)
        yield pathlib.Path(local)


def _files_under(folder: AnyPath) -> Iterator[AnyPath]:
    """Every file below `folder`, by listing each level (epath's gs:// has no recursive glob)."""
    for item in folder.iterdir():
        if item.is_dir():
            yield from _files_under(item)
        else:
            yield item


def upload_tree(local: str | os.PathLike, destination: AnyPath) -> None:
    """Copy every file under the local folder `local` to the same relative name under `destination`."""
    for root, _, files in os.walk(local):
        for name in files:
            target = destination.joinpath(*pathlib.Path(root, name).relative_to(local).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            upload(os.path.join(root, name), target)


class AppendFile:
    """A binary file that only grows (a log), on a local path or an object store.

    Locally: a real file opened for appending (`exclusive`: created, never an existing one;
    `initial`: replaced by a file of these bytes first, atomically) and flushed after every write, so a reader sees each
    record at once. On an object store, which cannot append, the bytes go to a local spool file and
    the whole object is rewritten on the first write, then at most every `upload_every` seconds, on
    `flush()` and on `close()`; appending to an existing object downloads it first.
    """

    def __init__(self, destination: str | os.PathLike, *, initial: bytes | None = None, exclusive: bool = False,
                 upload_every: float = UPLOAD_EVERY_S):
        self.path = path(destination)
        self.remote = not isinstance(self.path, pathlib.Path)
        self.upload_every = upload_every
        self._last_upload = -float("inf")
        if not self.remote:
            if initial is not None:  # a new file renamed over the old: a crash leaves one or the other
                partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
                partial.write_bytes(initial)
                os.replace(partial, self.path)
            self._file = open(self.path, "xb" if exclusive and initial is None else "ab")
            return
        if exclusive and self.path.exists():
            raise FileExistsError(f"{self.path} exists already")
        self._file = tempfile.TemporaryFile()
        if initial is None and self.path.exists():
            self._file.write(self.path.read_bytes())
        elif initial is not None:
            self._file.write(initial)
            self.flush()  # the truncation takes effect now, not at the first write

    def write(self, data: bytes) -> None:
        """Append `data`: flushed to the OS locally; uploaded when the last upload is old enough."""
        self._file.write(data)
        self._file.flush()
        if self.remote and time.monotonic() - self._last_upload >= self.upload_every:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far readable at `path` (remote: one upload of the whole file)."""
        self._file.flush()
        if self.remote:
            self._file.seek(0)
            with self.path.open("wb") as target:
                shutil.copyfileobj(self._file, target)
            self._file.seek(0, os.SEEK_END)
            self._last_upload = time.monotonic()

    def close(self) -> None:
        """Upload (remote) and close; idempotent. Writing afterwards raises rather than dropping data."""
        if self._file.closed:
            return
        if self.remote:
            self.flush()
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed
