"""Chained classifier-free guidance: branch weights by hand, guided eps against separate model calls."""
import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from upgpt_jax.diffusion import GUIDANCE_ORDER, guidance_branches, guided_eps_fn
from upgpt_jax.models.upgpt import build_model, example_inputs

NOTHING, POSE, POSE_STYLE, ALL = (frozenset(), frozenset({"pose"}), frozenset({"pose", "style"}),
                                  frozenset({"pose", "style", "text"}))
BATCH = 2


@pytest.mark.parametrize("scales, expected", [
    (dict(pose=1.0, style=1.0, text=1.0), [(ALL, 1.0)]),
    ({}, [(ALL, 1.0)]),
    (dict(pose=3.0, style=3.0, text=3.0), [(NOTHING, -2.0), (ALL, 3.0)]),
    (dict(pose=0.0, style=0.0, text=0.0), [(NOTHING, 1.0)]),
    (dict(text=2.5), [(POSE_STYLE, -1.5), (ALL, 2.5)]),
    (dict(pose=2.0, style=1.5, text=4.0), [(NOTHING, -1.0), (POSE, 0.5), (POSE_STYLE, -2.5), (ALL, 4.0)]),
])
def test_branch_weights_by_hand(scales, expected):
    assert guidance_branches(scales) == expected
    assert GUIDANCE_ORDER == ("pose", "style", "text")


@pytest.mark.parametrize("scales, message", [
    (dict(pose=1.0, shape=2.0), "shape"),
    (dict(pose=-1.0, text=2.0), "pose"),
])
def test_bad_scales_are_named(scales, message):
    with pytest.raises(ValueError, match=message):
        guidance_branches(scales)


@pytest.fixture(scope="module")
def micro_config(tiny_config):
    """The tiny model with a one-level UNet and short text: each UNet compile takes seconds, not tens."""
    model_config = copy.deepcopy(tiny_config.model)
    model_config.unet.update(channels=16, channel_mult=(1,), num_res_blocks=1, attention_levels=(0,), num_heads=2)
    model_config.clip.max_length = 8
    return model_config


@pytest.fixture(scope="module")
def micro_model(micro_config):
    """(module, random non-zero params) of the full UPGPT tree {"unet", "vae", "fusion"}."""
    model = build_model(micro_config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), **example_inputs(micro_config))
    return model, random_params(nn.unbox(shapes)["params"])


@pytest.fixture(scope="module")
def inputs(micro_config):
    model_config = micro_config
    fusion = model_config.fusion
    height, width = model_config.image_size
    downsample = 2 ** (len(model_config.vae.channel_mult) - 1)
    latent = (BATCH, height // downsample, width // downsample)
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    conditions = dict(text=normal(BATCH, model_config.clip.max_length, fusion.text_dim),
                      style=normal(BATCH, fusion.num_parts, fusion.style_dim),
                      pose=normal(BATCH, fusion.pose_dim),
                      style_present=jnp.asarray(rng.random((BATCH, fusion.num_parts)) < 0.7))
    person_mask = jnp.asarray(rng.random(latent + (1,)) < 0.5, jnp.float32)
    x = normal(*latent, model_config.unet.out_channels)
    timesteps = jnp.array([10, 700], jnp.int32)
    return conditions, person_mask, x, timesteps


@pytest.fixture(scope="module")
def branch_eps(micro_model, inputs):
    """e(S) for each kept set S of the chain, from separate model calls with the fusion's drop masks,
    and the plain conditional eps (no masks)."""
    model, params = micro_model
    conditions, person_mask, x, timesteps = inputs

    @jax.jit
    def eps_with(masks):
        context = model.apply({"params": params}, **conditions, **masks, method="context")
        return model.apply({"params": params}, x, person_mask, timesteps, context, method="denoise")

    branches = {kept: eps_with({f"drop_{name}": jnp.full((BATCH,), name not in kept) for name in GUIDANCE_ORDER})
                for kept in (NOTHING, POSE, POSE_STYLE, ALL)}
    return branches, eps_with({})


def _relative_error(ours, reference):
    return float(jnp.max(jnp.abs(ours - reference)) / jnp.max(jnp.abs(reference)))


def _guided_step(micro_model, inputs, scales, dropped=()):
    """One guided noise prediction as the sampler makes it, with the contexts built in the same trace."""
    model, _ = micro_model
    conditions, person_mask, _, _ = inputs
    return lambda params, x, t: guided_eps_fn(model, params, person_mask, conditions, scales, dropped)(x, t)


def _guided(micro_model, inputs, scales, dropped=()):
    _, params = micro_model
    _, _, x, timesteps = inputs
    return jax.jit(_guided_step(micro_model, inputs, scales, dropped))(params, x, timesteps)


def _unet_batch_sizes(micro_model, inputs, scales):
    """Batch sizes of the UNet calls one guided step makes (traced only, nothing compiled)."""
    _, params = micro_model
    _, _, x, timesteps = inputs
    sizes = []

    def record(call, args, kwargs, context):
        if context.method_name == "denoise":
            sizes.append(args[0].shape[0])
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(_guided_step(micro_model, inputs, scales), params, x, timesteps)
    return sizes


def test_scales_one_is_the_plain_conditional_eps_in_one_unet_call(micro_model, inputs, branch_eps):
    scales = dict(pose=1.0, style=1.0, text=1.0)
    assert _unet_batch_sizes(micro_model, inputs, scales) == [BATCH]
    _, plain = branch_eps
    assert _relative_error(_guided(micro_model, inputs, scales), plain) < 1e-5


def test_equal_scales_are_classic_cfg_in_one_batched_unet_call(micro_model, inputs, branch_eps):
    scale = 3.5
    scales = dict(pose=scale, style=scale, text=scale)
    assert _unet_batch_sizes(micro_model, inputs, scales) == [2 * BATCH]
    branches, _ = branch_eps
    expected = branches[NOTHING] + scale * (branches[ALL] - branches[NOTHING])
    assert _relative_error(_guided(micro_model, inputs, scales), expected) < 1e-5


def test_distinct_scales_chain_pose_style_text(micro_model, inputs, branch_eps):
    scales = dict(pose=2.0, style=1.5, text=4.0)
    assert _unet_batch_sizes(micro_model, inputs, scales) == [4 * BATCH]
    e, _ = branch_eps
    expected = (e[NOTHING] + 2.0 * (e[POSE] - e[NOTHING]) + 1.5 * (e[POSE_STYLE] - e[POSE])
                + 4.0 * (e[ALL] - e[POSE_STYLE]))
    assert _relative_error(_guided(micro_model, inputs, scales), expected) < 1e-5


def test_dropped_conditions_are_null_in_every_branch(micro_model, inputs, branch_eps):
    """Ablation: with text dropped and no extra guidance the prediction is e(pose, style); with
    style dropped under CFG on text, both branches lose the style: e(pose) + s (e(pose, text) - e(pose))
    (e(pose, text) computed here with its own drop masks)."""
    model, params = micro_model
    conditions, person_mask, x, timesteps = inputs
    branches, _ = branch_eps
    text_dropped = _guided(micro_model, inputs, dict(pose=1.0, style=1.0, text=1.0), dropped=("text",))
    assert _relative_error(text_dropped, branches[POSE_STYLE]) < 1e-5
    context = model.apply({"params": params}, **conditions, drop_text=jnp.zeros((BATCH,), bool),
                          drop_style=jnp.ones((BATCH,), bool), drop_pose=jnp.zeros((BATCH,), bool), method="context")
    pose_text = model.apply({"params": params}, x, person_mask, timesteps, context, method="denoise")
    style_dropped = _guided(micro_model, inputs, dict(pose=1.0, style=1.0, text=3.0), dropped=("style",))
    assert _relative_error(style_dropped, branches[POSE] + 3.0 * (pose_text - branches[POSE])) < 1e-5
    with pytest.raises(ValueError, match="cannot drop \\['shape'\\]"):
        guided_eps_fn(model, params, person_mask, conditions, {}, dropped=("shape",))


def test_missing_or_unknown_conditions_are_named(micro_model, inputs):
    model, params = micro_model
    conditions, person_mask, _, _ = inputs
    with pytest.raises(ValueError, match="missing \\['pose'\\], unknown \\['shape'\\]"):
        guided_eps_fn(model, params, person_mask, dict(text=conditions["text"], style=conditions["style"],
                                                       shape=conditions["pose"]), {})
