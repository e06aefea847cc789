"""Classifier-free guidance over UPGPT's three conditions, chained pose -> style -> text.

    eps = e(0) + s_pose (e(pose) - e(0)) + s_style (e(pose, style) - e(pose))
               + s_text (e(pose, style, text) - e(pose, style)),

where e(S) is the model's noise prediction with the conditions not in S replaced by their learned
null embeddings (the fusion's `drop_*` masks, which training's condition dropout taught it). Each
scale strengthens one condition on top of the ones before it in the chain. Regrouped, eps is a
weighted sum of the four branches with weights summing to 1; branches of weight 0 are skipped, so
all scales 1 costs one UNet call per step and all scales equal (classic CFG) two.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from upgpt_jax.diffusion.samplers import EpsFn

if TYPE_CHECKING:  # The diffusion package does not import the models at run time.
    from upgpt_jax.models.upgpt import UPGPT

GUIDANCE_ORDER = ("pose", "style", "text")

_CONDITION_INPUTS = ("text", "style", "pose")
_OPTIONAL_INPUTS = ("style_present",)


def guidance_branches(scales: Mapping[str, float]) -> list[tuple[frozenset[str], float]]:
    """The branches to evaluate: (conditions kept, weight), in chain order, zero weights omitted.

    `scales` maps condition names of GUIDANCE_ORDER to scales >= 0; a missing name means 1 (no
    extra guidance for it). The weights, 1 - s_pose, s_pose - s_style, s_style - s_text, s_text
    for the kept sets {}, {pose}, {pose, style}, {pose, style, text}, sum to 1.
    """
    unknown = sorted(set(scales) - set(GUIDANCE_ORDER))
    if unknown:
        raise ValueError(f"unknown guidance conditions {unknown}; expected names among {list(GUIDANCE_ORDER)}")
    negative = {name: scale for name, scale in scales.items() if scale < 0}
    if negative:
        raise ValueError(f"guidance scales must be >= 0, got {negative}")
    chain = [float(scales.get(name, 1.0)) for name in GUIDANCE_ORDER]
    weights = [1.0 - chain[0]] + [chain[i] - chain[i + 1] for i in range(len(chain) - 1)] + [chain[-1]]
    return [(frozenset(GUIDANCE_ORDER[:kept]), weight) for kept, weight in enumerate(weights) if weight != 0.0]


def guided_eps_fn(model: "UPGPT", params: Any, person_mask: jax.Array, conditions: Mapping[str, jax.Array],
                  scales: Mapping[str, float], dropped: Collection[str] = ()) -> EpsFn:
    """An `EpsFn` for `samplers.sample`: the guided noise prediction of `model` (UPGPT).

    `params` is the full UPGPT tree {"unet", "vae", "fusion"}; `person_mask` is (B, h, w, 1);
    `conditions` holds "text" (B, T, D), "style" (B, P, D), "pose" (B, 85) and optionally
    "style_present" (B, P). The branch contexts do not depend on t, so they are built here, once,
    in one batched fusion call; each step then runs the UNet once on all branches stacked along
    the batch and sums them with the branch weights (in float32). Conditions in `dropped` are
    replaced by their null embeddings in every branch (the evaluation's ablations).
    """
    missing = [name for name in _CONDITION_INPUTS if name not in conditions]
    unknown = sorted(set(conditions) - set(_CONDITION_INPUTS) - set(_OPTIONAL_INPUTS))
    if missing or unknown:
        raise ValueError(f"conditions must hold {list(_CONDITION_INPUTS)} and optionally "
                         f"{list(_OPTIONAL_INPUTS)}; missing {missing}, unknown {unknown}")
    unknown_dropped = sorted(set(dropped) - set(GUIDANCE_ORDER))
    if unknown_dropped:
        raise ValueError(f"cannot drop {unknown_dropped}; the conditions are {list(GUIDANCE_ORDER)}")
    branches = guidance_branches(scales)
    num_branches = len(branches)
    batch_size = conditions["pose"].shape[0]

    def stacked(value: jax.Array) -> jax.Array:
        return jnp.concatenate([value] * num_branches, axis=0)

    drops = {f"drop_{name}": jnp.repeat(jnp.array([name not in kept or name in dropped for kept, _ in branches]), batch_size)
             for name in GUIDANCE_ORDER}
    inputs = {name: stacked(value) for name, value in conditions.items()}
    context = model.apply({"params": params}, inputs.pop("text"), inputs.pop("style"), inputs.pop("pose"),
                          **inputs, **drops, method="context")
    stacked_mask = stacked(person_mask)
    weights = [weight for _, weight in branches]

    def eps_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        eps = model.apply({"params": params}, stacked(x), stacked_mask, stacked(t), context, method="denoise")
        per_branch = jnp.split(eps.astype(jnp.float32), num_branches, axis=0)
        return sum(weight * branch for weight, branch in zip(weights, per_branch))

    return eps_fn
