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
    """Each job's uint8 images, sampled together."""
    people = [person for job in jobs for person in job.people]
    seeds = [seed for job in jobs for seed in job.seeds]
    images = sampler(people, seeds, progress=progress)
    bounds = np.cumsum([0] + [len(job.people) for job in jobs])
    return [images[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]
