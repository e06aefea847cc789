"""One loaded model serving the page's requests: plan (check), sample, and keep compiled samplers.

The page's handlers run one at a time (the Gradio queue serialises them, see layout.py), and the
lock here also covers the start-up warm-up thread: the model's memory is shared, not per browser.
A `Sampler` is kept per `SamplingSettings` (the jitted function lives in the Sampler), so requests
with settings seen before reuse its compilation; batches have a fixed size, so every request of
the same settings has the same shapes and nothing recompiles.
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from upgpt_jax import sampling
from upgpt_jax.sampling.outputs import image_grid, write_animation
from upgpt_jax.sampling.run import sample_jobs


def error_line(error: BaseException) -> str:
    """The one line sample.py prints for a bad request (it exits with status 2; the page shows it)."""
    return f"error: {error}"


@dataclasses.dataclass
class Result:
    """A sampled request: the planned job, its images (uint8 N x H x W x 3) and its person masks."""

    job: sampling.Job
    images: np.ndarray
    seconds: float

    def samples(self) -> list[tuple[np.ndarray, str]]:
        return list(zip(self.images, self.job.labels))

    def references(self) -> list[tuple[np.ndarray, str]]:
        return [(image, label) for label, stack in self.job.references.items() for image in stack]

    def mask(self) -> np.ndarray:
        """The person mask(s) the pose(s) produced: one, or a strip of the distinct ones (interpolation)."""
        masks, seen = [], set()
        for person in self.job.people:
            if person.mask.tobytes() not in seen:
                seen.add(person.mask.tobytes())
                masks.append(np.repeat(person.mask[..., None].astype(np.uint8) * 255, 3, axis=-1))
        return masks[0] if len(masks) == 1 else image_grid(masks, columns=min(len(masks), 8))

    def animation(self) -> str:
        """The frames as a looping GIF (as sample.py writes it), in a fresh temporary folder."""
        stem = pathlib.Path(tempfile.mkdtemp(prefix="upgpt_app_")) / "animation"
        return str(write_animation(stem, self.images)[0])


class SamplingService:
    """Plans requests with the sampling package's checks and samples them with cached compiled samplers."""

    def __init__(self, loaded: sampling.LoadedModel, defaults: Mapping[str, Any], smpl_model_dir: str | None = None,
                 keep_samplers: int = 4):
        self.loaded = loaded
        self.context = sampling.TaskContext(loaded.config, smpl_model_dir)
        self.defaults = sampling.SamplingSettings.from_config(loaded.config.sampling, **defaults)
        self._samplers: collections.OrderedDict[sampling.SamplingSettings, sampling.Sampler] = (
            collections.OrderedDict())
        # (settings, edit?): the sampler, and Sampler.edit's own compiled function, that have run.
        self._compiled: set[tuple[sampling.SamplingSettings, bool]] = set()
        self._keep = keep_samplers
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.warm_up_seconds: float | None = None
        self.warm_up_error: str | None = None

    def settings(self, method: str, num_steps: int, guidance: Mapping[str, float]) -> sampling.SamplingSettings:
        """The default settings with the page's sampler, step count and guidance scales."""
        return dataclasses.replace(self.defaults, method=method, num_steps=int(num_steps),
                                   guidance=tuple(sorted((name, float(scale)) for name, scale in guidance.items())))

    def is_compiled(self, settings: sampling.SamplingSettings, task: str = "generate") -> bool:
        """Whether a request of `task` with `settings` runs without compiling (edits have their own)."""
        return (settings, task == "edit") in self._compiled

    def run(self, request: Mapping[str, Any], settings: sampling.SamplingSettings | None = None) -> Result:
        """Plan `request` (bad inputs raise `sampling.ConditionError` before any compute) and sample it."""
        settings = settings or self.defaults
        job = sampling.plan(self.context, request)
        with self._lock:
            sampler = self._sampler(settings)
            start = time.perf_counter()
            images = sample_jobs(sampler, [job])[0]
            self._compiled.add((settings, job.task == "edit"))
        return Result(job, images, time.perf_counter() - start)

    def warm_up(self, request: Mapping[str, Any]) -> None:
        """Compile the default settings' sampler with one request, and its editor with an edit of
        that request's person into itself, then set `ready` (for the status); a failure is kept for
        the status line (requests then compile on first use)."""
        try:
            result = self.run(request)
            with self._lock:
                start, person = time.perf_counter(), result.job.people[0]
                self._sampler(self.defaults).edit([person], [person], [0])
                self._compiled.add((self.defaults, True))
            self.warm_up_seconds = result.seconds + time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - shown in the page; the server keeps serving
            self.warm_up_error = f"{type(error).__name__}: {error}"
        finally:
            self.ready.set()

    def _sampler(self, settings: sampling.SamplingSettings) -> sampling.Sampler:
        if settings not in self._samplers:
            self._samplers[settings] = sampling.Sampler(self.loaded, settings)  # checks method and steps
            while len(self._samplers) > self._keep:
                dropped, _ = self._samplers.popitem(last=False)
                self._compiled -= {(dropped, False), (dropped, True)}
        self._samplers.move_to_end(settings)
        return self._samplers[settings]
