"""Shared fixtures: the tiny synthetic config and its model, built once per test session."""
import os
import sys

import pytest

# Tests import the config files as modules (configs/ is not an installed package).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def tiny_config():
    from configs import synthetic_tiny

    return synthetic_tiny.get_config()


def random_params(shapes, seed: int = 0, scale: float = 0.2):
    """Non-zero random parameters for a tree of shapes (numpy, no XLA compilation).

    Tests want every weight non-zero (LDM zero-initialises output layers, which would hide wrong
    wiring) and no seconds of compiling a random initialiser.
    """
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) * scale / np.sqrt(fan_in)).astype(leaf.dtype)

    return jax.tree.map(draw, shapes)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """(module, params) of the tiny UPGPT with random non-zero weights."""
    import flax.linen as nn
    import jax

    from upgpt_jax.models.upgpt import build_model, example_inputs

    model = build_model(tiny_config.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0), **example_inputs(tiny_config.model))
    return model, random_params(nn.unbox(shapes)["params"])
