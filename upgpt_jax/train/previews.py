"""Sample grids during training: fixed validation conditions, sampled from the current EMA weights.

Every `train.sample_every` steps the diffusion stage samples the first `train.num_previews`
test examples of its dataset (identities unseen in training; each example's target pose, mask
and text in its source's clothes, i.e. pose transfer) with the `sampling` settings and fixed
seeds, so successive grids show the same people improving. The grid (ground truth above,
samples below) goes to DIR/samples/step_NNNNNNN.png and to TensorBoard.
"""
from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from upgpt_jax import storage
from upgpt_jax.distributed import is_main_process
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.sampling.loading import LoadedModel
from upgpt_jax.sampling.grid import image_grid
from upgpt_jax.sampling.sampler import Sampler, SamplingSettings
from upgpt_jax.sampling.sources import DatasetExamples
from upgpt_jax.tokenizer import load_clip_tokenizer

SAMPLES_DIR = "samples"


class SamplePreviews:
    """`previews(step, params) -> grid` for one run; the sampler compiles on the first call."""

    def __init__(self, config: ml_collections.ConfigDict, model: UPGPT, clip: Any, clip_params: Any, mesh: Mesh,
                 workdir: str | pathlib.Path):
        examples = DatasetExamples(config)
        count = min(int(config.train.num_previews), len(examples))
        self.people = [examples.person(index) for index in range(count)]
        self.truth = [examples.image(index) for index in range(count)]
        loaded = LoadedModel(config=config, model=model, params=None, clip=clip, clip_params=clip_params,
                             tokenizer=load_clip_tokenizer(), mesh=mesh, source={})
        self.sampler = Sampler(loaded, SamplingSettings.from_config(config.sampling))
        self.seed = int(config.sampling.seed)
        self.folder = storage.path(workdir) / SAMPLES_DIR  # local or gs://

    def __call__(self, step: int, params: Any) -> np.ndarray:
        """Sample with `params` ({"unet", "fusion", "vae"}); process 0 writes the grid, every process
        must call (the sampler is one sharded computation)."""
        images = self.sampler(self.people, [self.seed] * len(self.people), params=params)
        grid = image_grid(self.truth + list(images), ["ground truth"] * len(images) + [f"step {step}"] * len(images),
                          columns=len(images))
        if is_main_process():
            self.folder.mkdir(parents=True, exist_ok=True)
            storage.save_image(grid, self.folder / f"step_{step:07d}.png")
        return grid
