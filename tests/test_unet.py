"""UNet parity with diffusers' UNet2DConditionModel, released-config size, dtype, remat, axes."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from references import diffusers_unet, nchw, nhwc, randomize_norms, relative_error
from upgpt_jax.weights.torch_params import match_torch_keys, torch_to_flax_params
from upgpt_jax.models.unet import UNet

RELEASED = dict(
    in_channels=5, out_channels=4, channels=224, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
    attention_levels=(0, 1, 2), num_heads=8, transformer_depth=1, context_dim=768,
)
# Level 2 has no transformer, so both CrossAttn* and plain Down/UpBlock2D are covered.
TINY = dict(
    in_channels=5, out_channels=4, channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
    attention_levels=(0, 1), num_heads=2, transformer_depth=1, context_dim=16, norm_groups=8,
)
# Two levels, one res block: enough for the dtype/remat/axes checks, and quick to compile.
SMALL = {**TINY, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_levels": (0,)}
SINGLE_LEVEL = {**SMALL, "channel_mult": (1,)}  # for gradients, whose compile time dominates
CONTEXT_LENGTH = 7


def random_torch_unet(config: dict) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return randomize_norms(diffusers_unet(config), seed=0)


def inputs(config: dict, height: int, width: int):
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((2, height, width, config["in_channels"])).astype(np.float32)
    context = rng.standard_normal((2, CONTEXT_LENGTH, config["context_dim"])).astype(np.float32)
    return sample, np.array([3.0, 517.5], np.float32), context


def converted_params(model: UNet, torch_model: UNet2DConditionModel, sample, timesteps, context):
    expected = jax.eval_shape(model.init, jax.random.key(0), sample, timesteps, context)
    return torch_to_flax_params(torch_model.state_dict(), expected, source="diffusers UNet")


@pytest.mark.parametrize(
    "overrides, height, width",
    [
        ({}, 16, 12),
        # odd sizes force upsampling to the skip's size; linear projections; 2 blocks deep
        (
            {**SMALL, "attention_levels": (0, 1), "use_linear_projection": True,
             "transformer_depth": 2, "num_heads": 4},
            9, 7,
        ),
    ],
)
def test_matches_diffusers(overrides, height, width):
    config = {**TINY, **overrides}
    torch_model = random_torch_unet(config)
    sample, timesteps, context = inputs(config, height, width)
    with torch.no_grad():
        reference = nhwc(
            torch_model(
                nchw(sample), torch.from_numpy(timesteps), encoder_hidden_states=torch.from_numpy(context)
            ).sample
        )
    model = UNet(**config)
    params = converted_params(model, torch_model, sample, timesteps, context)
    ours = jax.jit(model.apply)(params, sample, timesteps, context)
    assert ours.shape == (2, height, width, config["out_channels"])
    assert relative_error(ours, reference) <= 1e-4


def test_released_config_has_425m_params_laid_out_as_diffusers():
    model = UNet(**RELEASED)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 32, 24, 5)), jnp.zeros((1,)),
        jnp.zeros((1, 87, 768)),
    )
    ours = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(shapes)))
    with torch.device("meta"):
        reference = diffusers_unet(RELEASED)
    assert ours == sum(p.numel() for p in reference.parameters())
    assert round(ours / 1e6, 1) == 425.3
    torch_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert len(match_torch_keys(torch_shapes, shapes, source="meta UNet")) == len(torch_shapes)


def test_bfloat16_compute_is_close_to_float32():
    torch_model = random_torch_unet(SMALL)
    sample, timesteps, context = inputs(SMALL, 16, 12)
    params = converted_params(UNet(**SMALL), torch_model, sample, timesteps, context)
    full = jax.jit(UNet(**SMALL).apply)(params, sample, timesteps, context)
    half = jax.jit(UNet(**SMALL, dtype=jnp.bfloat16).apply)(params, sample, timesteps, context)
    assert half.dtype == jnp.bfloat16
    assert relative_error(half, full) <= 5e-2


def test_remat_gives_the_same_outputs_and_gradients():
    torch_model = random_torch_unet(SINGLE_LEVEL)
    sample, timesteps, context = inputs(SINGLE_LEVEL, 8, 6)
    params = converted_params(UNet(**SINGLE_LEVEL), torch_model, sample, timesteps, context)

    def loss_and_grad(remat: bool):
        model = UNet(**SINGLE_LEVEL, remat=remat)

        def loss(p):
            return jnp.mean(jnp.square(model.apply(p, sample, timesteps, context, train=True)))

        return jax.jit(jax.value_and_grad(loss))(params)

    (plain_loss, plain_grad), (remat_loss, remat_grad) = loss_and_grad(False), loss_and_grad(True)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    for plain, remat in zip(jax.tree.leaves(plain_grad), jax.tree.leaves(remat_grad)):
        assert relative_error(remat, plain) <= 1e-4


@pytest.mark.parametrize("use_linear_projection", [False, True])
def test_every_parameter_has_distinct_logical_axis_names(use_linear_projection):
    sample, timesteps, context = inputs(TINY, 16, 12)
    model = UNet(**TINY, use_linear_projection=use_linear_projection)
    boxed = jax.eval_shape(model.init, jax.random.key(0), sample, timesteps, context)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    specs = jax.tree.leaves(
        nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    assert len(specs) == len(leaves)
    for leaf, spec in zip(leaves, specs):
        assert len(spec) == leaf.value.ndim and None not in spec
        assert len(set(spec)) == len(spec), spec
