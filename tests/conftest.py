"""Shared fixtures: the tiny synthetic config and its model, built once per test session."""
import contextlib
import os
import sys

import pytest

# The suite runs on CPU. The test install has libtpu (the tpu extra, for the ahead-of-time TPU
# compiles of test_aot.py): without this, every process would try to open a TPU. Subprocesses inherit it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Tests import the config files as modules (configs/ is not an installed package).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def jax_compilation_cache(folder):
    """JAX's persistent compilation cache in `folder` (local or gs://), every compile cached, for the
    block; the previous settings and an empty in-memory cache state after it."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    try:
        yield folder
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
        compilation_cache.reset_cache()


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
    import numpy as np

    from upgpt_jax.models.upgpt import build_model, example_inputs

    model = build_model(tiny_config.model)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), **example_inputs(tiny_config.model)))["params"]
    params = random_params(shapes)
    if "condition_stats" in params:  # the identity: random statistics would scale the conditions by ~0.2
        params["condition_stats"] = {name: (np.ones if name.endswith("_scale") else np.zeros)(leaf.shape, leaf.dtype)
                                     for name, leaf in shapes["condition_stats"].items()}
    return model, params


def scaled_random_params(params):
    """`tiny_model`'s random weights, larger (UNet, fusion x5, VAE x3): at the fixture's scale the random
    UNet barely reacts to its conditions and the random decoder barely to its latents, and every
    sample would round to the same image."""
    import jax

    return {name: jax.tree.map(lambda x: x * (3.0 if name == "vae" else 5.0), tree) for name, tree in params.items()}


def write_run(directory, config, params):
    """A diffusion-stage workdir at `directory` whose step-7 checkpoint of `config` holds `params`
    as its EMA and half of them as its raw params, so the two differ."""
    import jax
    import numpy as np
    import optax

    from upgpt_jax.rundir.shardings import FROZEN, TRAINABLE
    from upgpt_jax.train.checkpointing import Checkpointer
    from upgpt_jax.train.state import TrainState

    trainable = {name: params[name] for name in TRAINABLE}
    state = TrainState(
        step=np.int32(7), params=jax.tree.map(lambda x: x * 0.5, trainable),
        opt_state=optax.adamw(1e-4).init(trainable), ema_params=trainable,
        frozen_params={name: params[name] for name in FROZEN if name in params}, rng=np.asarray(jax.random.PRNGKey(0)),
        skipped=np.int32(0))
    checkpointer = Checkpointer(directory / "checkpoints", keep=1, asynchronous=False)
    checkpointer.save(7, state, {"epoch": 0, "position": 0}, config)
    checkpointer.close()
    return directory


@pytest.fixture(scope="session")
def checkpointed_run(tmp_path_factory, tiny_config, tiny_model):
    """A workdir whose checkpoint holds random weights; EMA differs from the raw params."""
    return write_run(tmp_path_factory.mktemp("run"), tiny_config, scaled_random_params(tiny_model[1]))
