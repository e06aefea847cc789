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


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """(module, params) of the tiny UPGPT with random weights."""
    import flax.linen as nn
    import jax

    from upgpt_jax.models.upgpt import build_model, example_inputs

    model = build_model(tiny_config.model)
    variables = jax.jit(model.init)(jax.random.key(0), **example_inputs(tiny_config.model, batch_size=2))
    return model, nn.unbox(variables)["params"]
