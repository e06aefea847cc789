"""Sampling API: load a model, describe people, get images; the four UPGPT tasks on top.

    from upgpt_jax import pipeline
    loaded = pipeline.load_from_workdir("workdirs/synthetic_tiny")
    pipeline.run_requests(loaded, [{"task": "pose_transfer", "example": 3}], "samples/")
    # or lower level:
    sampler = pipeline.Sampler(loaded, pipeline.SamplingSettings(num_steps=25))
    images = sampler([person], seeds=[0])   # person: pipeline.Person(text, smpl, mask, styles...)
"""
from upgpt_jax.pipeline.conditions import ConditionError, Person
from upgpt_jax.pipeline.loading import LoadedModel, load_from_params, load_from_workdir
from upgpt_jax.pipeline.run import plan_requests, run_jobs, run_requests, sample_jobs
from upgpt_jax.pipeline.sampler import Sampler, SamplingSettings
from upgpt_jax.pipeline.tasks import TASKS, Job, TaskContext, plan
from upgpt_jax.rundir.restore import run_config  # the API's: which config a run sampled with

__all__ = [
    "TASKS", "ConditionError", "Job", "LoadedModel", "Person", "Sampler", "SamplingSettings", "TaskContext",
    "load_from_params", "load_from_workdir", "plan", "plan_requests", "run_config", "run_jobs", "run_requests",
    "sample_jobs",
]
