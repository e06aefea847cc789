"""Run a list of requests as one batch job: plan (validate) all, sample all, write each."""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from upgpt_jax import storage
from upgpt_jax.sampling.conditions import ConditionError
from upgpt_jax.sampling.loading import LoadedModel
from upgpt_jax.sampling.outputs import write_job
from upgpt_jax.sampling.sampler import Sampler, SamplingSettings
from upgpt_jax.sampling.tasks import Job, TaskContext, plan


def plan_requests(config: Any, requests: Sequence[Mapping[str, Any]], smpl_model_dir: str | None = None) -> list[Job]:
    """Every request's `Job`, checked before any compute (bad inputs raise ConditionError)."""
    context = TaskContext(config, smpl_model_dir)
    jobs = [plan(context, request, index) for index, request in enumerate(requests)]
    names = [job.name for job in jobs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConditionError(f"requests share the names {duplicated}; give each a unique 'name'")
    return jobs


def run_jobs(loaded: LoadedModel, jobs: Sequence[Job], out_dir: str | pathlib.Path,
             settings: SamplingSettings | None = None, progress: bool = True,
             subfolders: bool = True) -> list[storage.AnyPath]:
    """Sample all jobs together, in full sharded batches, and write each one's folder under `out_dir`
    (a local folder or a gs:// URL); `subfolders=False` writes a single job into `out_dir` itself."""
    if not subfolders and len(jobs) != 1:
        raise ValueError(f"subfolders=False writes one job into {out_dir}, got {len(jobs)} jobs")
    settings = settings or SamplingSettings.from_config(loaded.config.sampling)
    images = sample_jobs(Sampler(loaded, settings), jobs, progress)
    metadata = dict(checkpoint=loaded.source, sampling=dataclasses.asdict(settings), config=loaded.config.to_dict())
    return [write_job(out_dir, job, job_images, metadata, subfolders) for job, job_images in zip(jobs, images)]


def run_requests(loaded: LoadedModel, requests: Sequence[Mapping[str, Any]], out_dir: str | pathlib.Path,
                 settings: SamplingSettings | None = None, smpl_model_dir: str | None = None,
                 progress: bool = True) -> list[storage.AnyPath]:
    """`plan_requests` then `run_jobs`; returns the written folders."""
    return run_jobs(loaded, plan_requests(loaded.config, requests, smpl_model_dir), out_dir, settings, progress)


def sample_jobs(sampler: Sampler, jobs: Sequence[Job], progress: bool = False) -> list[np.ndarray]:
    """Each job's uint8 images, sampled together: the edit jobs' pairs by `Sampler.edit` (an
    inferred edit region is added to the job's references as "edit region"), the rest in one list."""
    edits = [job for job in jobs if job.task == "edit"]
    others = [job for job in jobs if job.task != "edit"]
    images: dict[int, np.ndarray] = {}
    if others:
        drawn = sampler([person for job in others for person in job.people],
                        [seed for job in others for seed in job.seeds], progress=progress)
        bounds = np.cumsum([0] + [len(job.people) for job in others])
        images.update({id(job): drawn[start:stop] for job, start, stop in zip(others, bounds[:-1], bounds[1:])})
    if edits:
        unedited, edited, regions = sampler.edit([job.people[0] for job in edits], [job.people[1] for job in edits],
                                                 [job.seeds[1] for job in edits], progress=progress)
        for index, job in enumerate(edits):
            images[id(job)] = np.stack([unedited[index], edited[index]])
            if sampler.settings.edit_region == "inferred":
                job.references["edit region"] = region_image(regions[index], unedited.shape[1:3])[None]
    return [images[id(job)] for job in jobs]


def region_image(region: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """An edit region (h, w) in [0, 1] at latent resolution as a uint8 RGB image of `image_size`,
    white where the edit acts (each latent pixel a block)."""
    scale = (image_size[0] // region.shape[0], image_size[1] // region.shape[1])
    blocks = np.kron(np.clip(region, 0.0, 1.0), np.ones(scale))
    return np.repeat(np.round(blocks * 255).astype(np.uint8)[..., None], 3, axis=-1)
