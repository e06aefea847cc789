"""The frozen statistics of `model.standardize_conditions`, measured when a diffusion run starts.

`ConditionStandardizer` (models/fusion.py) maps the CLIP embeddings to (x - mean) * scale. Here a
fresh run measures, over the first `model.condition_stats_examples` training examples (pixel
batches through the frozen CLIP, or precomputed features):
- text_mean (T, D): the mean text state per token and feature; text_scale: 1 / the pooled std of
  the states around it (one number: the tokens keep their relative sizes);
- style_mean (P, D) and style_scale alike, over the parts that are present (absent parts are
  replaced by their null token after standardizing, so they must not bias the mean).
The values go into the state's frozen params, so checkpoints, resumes and sampling carry them; a
resumed run restores them rather than measuring again. The sums are reduced on the devices, so
every process of a multi-host run gets the same statistics of the global batches.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from upgpt_jax.data.pipeline import make_global_batch
from upgpt_jax.distributed import compile_then_meet, host_to_global, is_main_process
from upgpt_jax.phases import phase
from upgpt_jax.train.build import Parts
from upgpt_jax.train.data import training_pipeline
from upgpt_jax.train.state import TrainState

PART = "condition_stats"


def _batch_sums(text: jax.Array, style: jax.Array, present: jax.Array) -> dict[str, jax.Array]:
    """Sums over the batch of x and x^2 (style: over present parts only) and the counts."""
    weight = present.astype(jnp.float32)[..., None]  # (B, P, 1)
    return {
        "text_count": jnp.asarray(text.shape[0], jnp.float32),
        "text_sum": text.sum(0),
        "text_sq": jnp.square(text).sum(0),
        "style_count": weight.sum(0),  # (P, 1)
        "style_sum": (style * weight).sum(0),
        "style_sq": (jnp.square(style) * weight).sum(0),
    }


def statistics_from_sums(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{text,style}_{mean,scale} from the accumulated sums (float64 on the host)."""
    stats = {}
    for name in ("text", "style"):
        count = np.asarray(sums[f"{name}_count"], np.float64)
        total, squares = np.asarray(sums[f"{name}_sum"], np.float64), np.asarray(sums[f"{name}_sq"], np.float64)
        mean = total / np.maximum(count, 1.0)  # a part never present keeps mean 0
        variance = (squares - count * np.square(mean)).sum() / (np.broadcast_to(count, mean.shape).sum())
        std = math.sqrt(max(float(variance), 0.0))
        if not std > 0:
            raise ValueError(f"model.standardize_conditions: the {name} embeddings of the first training examples "
                             f"do not vary (std {std}); cannot standardize them")
        stats[f"{name}_mean"] = mean.astype(np.float32)
        stats[f"{name}_scale"] = np.float32(1.0 / std)
    return stats


def measure_condition_stats(config: ml_collections.ConfigDict, parts: Parts,
                            frozen_params: Any) -> dict[str, np.ndarray]:
    """The statistics of the module docstring over at least `config.model.condition_stats_examples`
    training examples, in the training data's order (a fresh pipeline: the run's own is untouched)."""
    wanted = int(config.model.condition_stats_examples)
    if wanted < 2:
        raise ValueError(f"model.condition_stats_examples must be >= 2, got {wanted}")
    reduce = jax.jit(_batch_sums, out_shardings=jax.sharding.NamedSharding(parts.mesh, jax.sharding.PartitionSpec()))
    totals, seen = None, 0
    with training_pipeline(config) as pipeline:
        while seen < wanted:
            batch = make_global_batch(next(pipeline), parts.mesh, config.axis_rules)
            batch = parts.stage.step_input(frozen_params, batch,
                                           compile_label=None if seen else "condition statistics: encode")
            arguments = (batch["text_embedding"], batch["style_embedding"], batch["style_present"])
            if not seen:
                compile_then_meet(reduce, "condition statistics: sums", *arguments)
            sums = jax.device_get(reduce(*arguments))
            totals = sums if totals is None else {key: totals[key] + value for key, value in sums.items()}
            seen += batch["text_embedding"].shape[0]
    stats = statistics_from_sums(totals)
    if is_main_process():
        tqdm.write(f"model.standardize_conditions: statistics of {seen} examples (text scale "
                   f"{float(stats['text_scale']):.3f}, style scale {float(stats['style_scale']):.3f})")
    return stats


def with_condition_stats(state: TrainState, parts: Parts, config: ml_collections.ConfigDict) -> TrainState:
    """A fresh `state` with measured statistics in `frozen_params["condition_stats"]` when the model
    standardizes its conditions; `state` itself otherwise."""
    if PART not in state.frozen_params:
        return state
    with phase(f"condition statistics (model.standardize_conditions): CLIP embeddings of "
               f"{int(config.model.condition_stats_examples)} training examples", enabled=is_main_process()):
        stats = measure_condition_stats(config, parts, state.frozen_params)
    shardings = parts.shardings.frozen_params[PART]
    placed = {name: host_to_global(stats[name], shardings[name]) for name in shardings}
    return state.replace(frozen_params={**state.frozen_params, PART: placed})
