"""Pick numpy or jax.numpy from the arrays a function receives.

The rotation, interpolation and kinematics code is written once against an array module
``xp`` so the numpy and JAX versions cannot drift apart; numpy inputs stay numpy (no device
transfer, float64 kept, no JAX import needed), jax arrays and tracers get jax.numpy and stay
jit/vmap/grad-safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def array_module(*arrays: Any) -> Any:
    """jax.numpy if any argument is a jax array or tracer, else numpy."""
    if any(type(array).__module__.split(".")[0] in ("jax", "jaxlib") for array in arrays):
        import jax.numpy as jnp

        return jnp
    return np
