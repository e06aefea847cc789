"""Sampling API: load a model, describe people, get images; the four UPGPT tasks on top.

    from upgpt_jax import sampling
    loaded = sampling.load_from_workdir("workdirs/synthetic_tiny")
    sampling.run_requests(loaded, [{"task": "pose_transfer", "example": 3}], "samples/")
    # or lower level:
    sampler = sampling.Sampler(loaded, sampling.SamplingSettings(num_steps=25))
    images = sampler([person], seeds=[0])   # person: sampling.Person(text, smpl, mask, styles...)
"""
from upgpt_jax.sampling.conditions import ConditionError, Person
from upgpt_jax.sampling.loading import LoadedModel, load_from_params, load_from_workdir, params_config
from upgpt_jax.sampling.run import plan_requests, run_jobs, run_requests, sample_jobs
from upgpt_jax.sampling.sampler import Sampler, SamplingSettings
from upgpt_jax.sampling.tasks import TASKS, Job, TaskContext, plan
from upgpt_jax.rundir.restore import run_config  # the API's: which config a run sampled with

__all__ = [
    "TASKS", "ConditionError", "Job", "LoadedModel", "Person", "Sampler", "SamplingSettings", "TaskContext",
    "load_from_params", "load_from_workdir", "params_config", "plan", "plan_requests", "run_config", "run_jobs",
    "run_requests", "sample_jobs",
]
