"""One training job per workdir: a hold file, DIR/hold.json, that a second job refuses to run beside.

Why: two jobs on one workdir overwrite each other's checkpoints and the second cuts the first's
metrics.jsonl back to its own resume step. The hold is a plain file (local or gs://), so it works
wherever the workdir does:
- it names the holder: host, pid, a job id, when it started and its last heartbeat (rewritten
  every `HEARTBEAT_S` seconds by a daemon thread, so a long first compile keeps it fresh);
- a multi-host job is one holder: process 0 takes the hold and tells the other processes the
  outcome through the jax.distributed coordinator, so they stop with it when it is refused;
- a hold is stale, and is taken over with a warning, when its host is this host and its pid is
  gone (a killed run, rerun on the same machine), or when its heartbeat is older than `STALE_S`
  (a killed run on another host, a lost VM);
- taking it: locally an exclusive create (or an atomic replace of a stale hold) then a read-back;
  on an object store a write then a read-back (no compare-and-swap through gcsfs: two jobs starting
  in the same second can both pass; one sees the other's id on its next heartbeat and warns).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jax

from upgpt_jax import storage
from upgpt_jax.cli_errors import BadInput
from upgpt_jax.distributed import from_main_process

HOLD_FILE = "hold.json"
HEARTBEAT_S = 60.0
STALE_S = 600.0


class WorkdirBusy(BadInput):
    """Another live job holds the workdir."""


@contextlib.contextmanager
def hold_workdir(workdir: storage.AnyPath) -> Iterator[None]:
    """Hold `workdir` for the block (every process of the job calls this; process 0 holds)."""
    hold = WorkdirHold(workdir / HOLD_FILE) if jax.process_index() == 0 else None
    refusal = ""
    if hold is not None:
        try:
            hold.acquire()
        except WorkdirBusy as error:
            refusal = str(error)
    refusal = from_main_process(refusal)  # the other processes of the job stop with process 0
    if refusal:
        raise WorkdirBusy(refusal)
    try:
        yield
    finally:
        if hold is not None:
            hold.release()


class WorkdirHold:
    """The hold file at `path`, taken by `acquire` and given back by `release`."""

    def __init__(self, path: storage.AnyPath):
        self.path = path
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "job": uuid.uuid4().hex,
                       "started": time.time(), "heartbeat": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the hold, or raise WorkdirBusy naming the live holder."""
        holder = read_hold(self.path)
        if holder is not None:
            reason = stale_reason(holder)
            if reason is None:
                raise WorkdirBusy(f"{self.path.parent} is in use by {describe(holder)}; a second job would "
                                  f"overwrite its checkpoints (stop it first, or use another --workdir)")
            print(f"warning: taking over the hold of {describe(holder)} on {self.path.parent}: {reason}", flush=True)
        self._write(exclusive=holder is None and not self.path.exists())  # an unreadable hold is replaced
        holder = read_hold(self.path)
        if holder is None or holder.get("job") != self.record["job"]:
            raise WorkdirBusy(f"{self.path.parent} was just taken by "
                              f"{describe(holder) if holder else 'another job'}")
        self._thread = threading.Thread(target=self._beat, name="workdir-hold", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the hold file if it is still this job's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = read_hold(self.path)
        if holder is not None and holder.get("job") == self.record["job"]:
            self.path.unlink()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = read_hold(self.path)
            if holder is None or holder.get("job") != self.record["job"]:
                print(f"warning: {self.path} now names {describe(holder) if holder else 'no job'}; "
                      f"two jobs may be writing {self.path.parent}", flush=True)
                return
            self.record["heartbeat"] = time.time()
            self._write(exclusive=False)

    def _write(self, exclusive: bool) -> None:
        data = json.dumps(self.record).encode()
        if not isinstance(self.path, pathlib.Path):
            self.path.write_bytes(data)
            return
        if exclusive:
            try:
                with open(self.path, "xb") as file:
                    file.write(data)
                return
            except FileExistsError:  # another job created it since we looked: the read-back refuses
                return
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, self.path)


def read_hold(path: storage.AnyPath) -> dict[str, Any] | None:
    """The hold record at `path`; None when there is none (a file cut short counts as none)."""
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why `holder`'s hold no longer counts (None: its job may still run)."""
    age = (now or time.time()) - float(holder.get("heartbeat", 0))
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"process {holder.get('pid')} is gone"
    if age > STALE_S:
        return f"no heartbeat for {age:.0f} s (limit {STALE_S:.0f} s)"
    return None


def describe(holder: dict[str, Any]) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (f"job {holder.get('job', '?')[:8]} (pid {holder.get('pid')} on {holder.get('host')}, "
            f"heartbeat {age:.0f} s ago)")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
