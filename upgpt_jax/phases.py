"""Timed console lines for the long silent phases of a command (set-up, statistics, compiling,
scoring): a user watching a bar at 0% should read what runs and how long it took."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from tqdm import tqdm


@contextlib.contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    """Write `what ...` on entry and `what: N.N s` on a normal exit (through tqdm.write, so an
    open progress bar stays intact); `enabled=False` (e.g. processes other than 0) writes nothing."""
    if enabled:
        tqdm.write(f"{what} ...")
    started = time.perf_counter()
    yield
    if enabled:
        tqdm.write(f"{what}: {time.perf_counter() - started:.1f} s")
