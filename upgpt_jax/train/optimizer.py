"""The optimizer of the diffusion stage: AdamW after a linear warm-up, with clipping and EMA.

As the original (LDM's `configure_optimizers` with a LambdaLR warm-up): AdamW with weight decay
0.01 and a constant learning rate after `warmup_steps` of linear warm-up; gradients are clipped
by their global norm first. `decay_steps` > 0 adds a cosine decay after the warm-up, down to
`end_learning_rate_factor` * lr at update `decay_steps` (and constant after): short runs (the
tiny configs' minutes of CPU) end much nearer a minimum that way than at a constant rate. The
decay is counted in updates, not in `train.num_steps`, so that continuing a run to a larger
num_steps does not change the rate of the steps already taken. `grad_accum_steps` > 1 wraps it
in `optax.MultiSteps`, which averages that many micro-batch gradients before one update (the
schedule then counts updates).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(optim_config: ml_collections.ConfigDict) -> optax.Schedule:
    """lr * min(1, (count + 1) / warmup_steps) (the first update already gets a non-zero rate),
    times the cosine decay of the module doc when `decay_steps` > 0."""
    peak, warmup = float(optim_config.learning_rate), int(optim_config.warmup_steps)
    decay_steps = int(optim_config.get("decay_steps", 0))
    end_factor = float(optim_config.get("end_learning_rate_factor", 0.0))
    if decay_steps and decay_steps <= warmup:
        raise ValueError(f"optim.decay_steps ({decay_steps}) must exceed optim.warmup_steps ({warmup}), or be 0")

    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        rate = jnp.asarray(peak, jnp.float32)
        if warmup > 0:
            rate = rate * jnp.minimum(1.0, (count + 1.0) / warmup)
        if decay_steps:
            progress = jnp.clip((count - warmup) / (decay_steps - warmup), 0.0, 1.0)
            rate = rate * (end_factor + (1.0 - end_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        return rate

    return schedule


def make_optimizer(optim_config: ml_collections.ConfigDict, grad_accum_steps: int = 1) -> optax.GradientTransformation:
    """Global-norm clipping -> AdamW on the schedule above (-> MultiSteps when accumulating)."""
    if optim_config.name != "adamw":
        raise ValueError(f"optim.name must be 'adamw', got {optim_config.name!r}")
    if grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps}")
    transforms = []
    if optim_config.grad_clip_norm:
        transforms.append(optax.clip_by_global_norm(float(optim_config.grad_clip_norm)))
    transforms.append(optax.adamw(
        learning_rate_schedule(optim_config), b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
        weight_decay=optim_config.weight_decay,
    ))
    optimizer = optax.chain(*transforms)
    if grad_accum_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=grad_accum_steps)
    return optimizer


def current_learning_rate(optim_config: ml_collections.ConfigDict, opt_state: Any,
                          grad_accum_steps: int = 1) -> jax.Array:
    """The rate the next update will use, read from the AdamW state's update count."""
    if grad_accum_steps > 1:
        opt_state = opt_state.inner_opt_state
    counts = [state.count for state in jax.tree.leaves(opt_state, is_leaf=_is_adam_state)
              if isinstance(state, optax.ScaleByAdamState)]
    return learning_rate_schedule(optim_config)(counts[0])


def ema_decay_at(decay: float, num_updates: jax.Array) -> jax.Array:
    """LDM's LitEma warm-up: min(decay, (1 + n) / (10 + n)) at the n-th update (n >= 1), so that a
    short run's EMA is not dominated by the initial weights (with a fixed 0.999 they would still be
    37% of it after 1000 steps)."""
    num_updates = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + num_updates) / (10.0 + num_updates))


def ema_update(ema_params: Any, params: Any, decay: float | jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf in float32."""
    return jax.tree.map(lambda ema, new: ema + (1.0 - decay) * (new.astype(ema.dtype) - ema), ema_params, params)


def _is_adam_state(node: Any) -> bool:
    return isinstance(node, optax.ScaleByAdamState)
