"""Writing a job's results: one PNG per sample, a labelled grid, a JSON record, and for
interpolations the frames as an animated GIF (and an MP4 when imageio with ffmpeg is installed)."""
from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from upgpt_jax import storage
from upgpt_jax.sampling.grid import image_grid
from upgpt_jax.sampling.tasks import Job


def write_job(out_dir: str | pathlib.Path, job: Job, images: np.ndarray,
              metadata: Mapping[str, Any], subfolder: bool = True) -> storage.AnyPath:
    """Write `job`'s samples under out_dir/<job.name>/ (a local folder or a gs:// URL), or with
    `subfolder=False` into out_dir itself (sample.py's single request), and return that folder."""
    folder = storage.path(out_dir)
    if subfolder:
        folder = folder / job.name  # plan() keeps job.name to one path component
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, image in enumerate(images):
        path = folder / f"sample_{index:03d}.png"
        storage.save_image(image, path)
        files.append(path.name)
    # References (ground truth, source) in the first row(s), the samples from a new row on.
    references = [(label, image) for label, stack in job.references.items() for image in stack]
    columns = min(max(len(images), len(references), 1), 10)
    blanks = -len(references) % columns
    white = np.full_like(images[0], 255)
    grid_images = [image for _, image in references] + [white] * blanks + list(images)
    grid_labels = [label for label, _ in references] + [""] * blanks + list(job.labels)
    storage.save_image(image_grid(grid_images, grid_labels, columns), folder / "grid.png")
    for label, stack in job.references.items():
        for index, image in enumerate(stack):
            storage.save_image(image, folder / f"{label.replace(' ', '_')}_{index:03d}.png")
    record = dict(metadata, task=job.task, name=job.name, request=job.request, notes=job.notes, files=files, samples=[
        dict(file=file, seed=seed, label=label, conditions=person.describe())
        for file, seed, label, person in zip(files, job.seeds, job.labels, job.people)])
    (folder / "samples.json").write_text(json.dumps(record, indent=2, default=jsonable) + "\n")
    if job.task == "interpolate":
        write_animation(folder / "animation", images)
    return folder


def write_animation(stem: storage.AnyPath, frames: np.ndarray, fps: int = 8) -> list[storage.AnyPath]:
    """stem.gif (always; forwards then backwards, looping) and stem.mp4 when imageio-ffmpeg is there
    (local or gs://: the encoders write a local file, `storage.local_output` uploads it)."""
    sequence = list(frames) + list(frames[-2:0:-1])
    pil = [Image.fromarray(frame) for frame in sequence]
    written = [stem.with_suffix(".gif")]
    with storage.local_output(written[0]) as local:
        pil[0].save(local, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
    if importlib.util.find_spec("imageio") is None or importlib.util.find_spec("imageio_ffmpeg") is None:
        return written  # optional: pip install imageio imageio-ffmpeg
    import imageio.v2 as imageio

    # The format is named: with tifffile installed (scikit-image pulls it in) imageio's own
    # choice by extension can land on a writer that takes no fps.
    with storage.local_output(stem.with_suffix(".mp4")) as local, \
            imageio.get_writer(local, format="FFMPEG", fps=fps, macro_block_size=1) as writer:
        for frame in sequence:
            writer.append_data(frame)
    written.append(stem.with_suffix(".mp4"))
    return written


def jsonable(value: Any) -> Any:
    """json.dumps default: numpy arrays and scalars as Python values, anything else as its str."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return str(value)
