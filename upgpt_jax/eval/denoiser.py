"""Condition sensitivity of the denoiser: how much worse it predicts the noise without each condition.

The sample metrics (IoU, colour accuracy) only move once a condition changes the images enough to
flip a part's nearest palette colour. Long before that, a model that starts to use a condition
predicts the noise better with it. So, on the real targets noised at a few fixed timesteps, this
compares the denoiser's eps MSE with all conditions against its MSE with one condition replaced
by its null embedding (what condition dropout trains) or with every condition taken from the
next example of the batch (the person mask stays: it is an input channel). The numbers are
relative increases: 0.0 means the condition is ignored, 0.1 that the error grows by 10% without it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from upgpt_jax.diffusion import NoiseSchedule
from upgpt_jax.distributed import host_to_global
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.sampling.sampler import condition_embeddings, encode_conditions
from upgpt_jax.sharding import batch_sharding, batch_shards, on_mesh, pad_batch

TIMESTEPS = (250, 500, 750)
# Variant -> (drop masks, whether the conditions come from the batch's next example).
VARIANTS = {"text_dropped": (("text",), False), "style_dropped": (("style",), False),
            "pose_dropped": (("pose",), False), "all_shuffled": ((), True)}


def denoiser_sensitivity(loaded: Any, people: Sequence[Any], images: np.ndarray, seed: int = 0,
                         batch_size: int = 8, timesteps: Sequence[int] = TIMESTEPS) -> dict[str, float]:
    """{"eps_mse": MSE with every condition, "<variant>": relative MSE increase} over `people` and
    their target `images` (uint8 (N, H, W, 3)), in batches of `batch_size` (the last one padded; a
    last batch of one person, who has no one to swap conditions with, is left out); noise from `seed`."""
    if len(people) != len(images):
        raise ValueError(f"denoiser_sensitivity: {len(people)} people but {len(images)} images")
    batch_size = max(2, int(batch_size))
    usable = len(people) - (len(people) % batch_size == 1)
    if usable < 2:
        raise ValueError(f"denoiser_sensitivity needs at least 2 people, got {len(people)}")
    schedule = NoiseSchedule.from_config(loaded.config.diffusion)
    mesh, rules = loaded.mesh, loaded.config.axis_rules
    errors_of = _squared_errors(loaded.model, loaded.clip, schedule, tuple(int(t) for t in timesteps), mesh, rules)
    # Padded up to the mesh's batch shards with copies of the last row, which is also what the
    # first row's shuffled conditions come from: the numbers do not depend on the mesh.
    shards = batch_shards(mesh, rules)
    padded_size = -(-batch_size // shards) * shards
    sums: dict[str, float] = {}
    for start in range(0, usable, batch_size):
        stop = min(start + batch_size, usable)
        inputs = encode_conditions(loaded, people[start:stop])
        inputs["image"] = np.asarray(images[start:stop], np.float32) / 127.5 - 1.0
        padded = host_to_global({key: pad_batch(value, padded_size) for key, value in inputs.items()},
                                batch_sharding(mesh, rules))
        errors = errors_of(loaded.params, loaded.clip_params, padded, jax.random.fold_in(jax.random.key(seed), start))
        for name, values in errors.items():
            sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values)[:stop - start]))
    base = sums.pop("all")
    return {"eps_mse": base / usable, **{name: value / base - 1.0 for name, value in sums.items()}}


def _squared_errors(model: UPGPT, clip: Any, schedule: NoiseSchedule, timesteps: tuple[int, ...], mesh: Mesh,
                    rules: Any) -> Any:
    """jitted (params, clip_params, inputs, rng) -> {variant or "all": per-example eps MSE (B,)},
    averaged over `timesteps`; batch-sharded on `mesh` by the axis `rules`."""

    def run(params: Any, clip_params: Any, inputs: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
        conditions = condition_embeddings(clip, clip_params, inputs)
        latents = model.apply({"params": params}, inputs["image"], method=UPGPT.encode)
        batch = latents.shape[0]
        everyone = jnp.ones((batch,), bool)
        shuffled = {key: jnp.roll(value, 1, axis=0) for key, value in conditions.items()}

        def eps_error(noisy: jax.Array, t: jax.Array, noise: jax.Array, drops: tuple[str, ...],
                      shuffle: bool) -> jax.Array:
            used = shuffled if shuffle else conditions
            masks = {f"drop_{name}": everyone for name in drops}

            def predict(module: UPGPT) -> jax.Array:
                context = module.context(used["text"], used["style"], used["pose"],
                                         style_present=used["style_present"], **masks)
                return module.denoise(noisy, inputs["person_mask"], t, context)

            eps = model.apply({"params": params}, method=predict)
            return jnp.mean(jnp.square(eps.astype(jnp.float32) - noise), axis=(1, 2, 3))

        totals = {name: 0.0 for name in ("all", *VARIANTS)}
        for index, timestep in enumerate(timesteps):
            noise = jax.random.normal(jax.random.fold_in(rng, index), latents.shape, jnp.float32)
            t = jnp.full((batch,), timestep, jnp.int32)
            noisy = schedule.add_noise(latents.astype(jnp.float32), noise, t)
            totals["all"] += eps_error(noisy, t, noise, (), False) / len(timesteps)
            for name, (drops, shuffle) in VARIANTS.items():
                totals[name] += eps_error(noisy, t, noise, drops, shuffle) / len(timesteps)
        return totals

    return jax.jit(on_mesh(run, mesh, rules), out_shardings=batch_sharding(mesh, rules))
