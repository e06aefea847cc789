"""AutoencoderKL parity with diffusers' AutoencoderKL (posterior, KL, decoder), non-square."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from references import KL_F8_VAE, diffusers_vae, nchw, nhwc, randomize_norms, relative_error
from upgpt_jax.weights.torch_params import match_torch_keys, torch_to_flax_params
from upgpt_jax.models.vae import AutoencoderKL

TINY = dict(
    in_channels=3, out_channels=3, channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
    z_channels=4, norm_groups=8,
)
HEIGHT, WIDTH = 64, 48


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    torch_model = randomize_norms(diffusers_vae(TINY), seed=0)
    model = AutoencoderKL(**TINY)
    image = np.zeros((1, HEIGHT, WIDTH, 3), np.float32)
    expected = jax.eval_shape(model.init, jax.random.key(0), image)
    params = torch_to_flax_params(torch_model.state_dict(), expected, source="diffusers VAE")
    return torch_model, model, params


def image_batch() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.uniform(-1, 1, (2, HEIGHT, WIDTH, 3)).astype(np.float32)


def test_encode_matches_diffusers_posterior(models):
    torch_model, model, params = models
    image = image_batch()
    with torch.no_grad():
        reference = torch_model.encode(nchw(image)).latent_dist
    posterior = jax.jit(lambda p, x: model.apply(p, x, method=AutoencoderKL.encode))(params, image)
    assert posterior.mean.shape == (2, HEIGHT // 4, WIDTH // 4, TINY["z_channels"])
    assert relative_error(posterior.mean, nhwc(reference.mean)) <= 1e-4
    assert relative_error(posterior.logvar, nhwc(reference.logvar)) <= 1e-4
    assert relative_error(posterior.kl(), reference.kl().numpy()) <= 1e-4


def test_decode_matches_diffusers(models):
    torch_model, model, params = models
    latent = np.random.default_rng(3).standard_normal((2, 16, 12, 4)).astype(np.float32)
    with torch.no_grad():
        reference = nhwc(torch_model.decode(nchw(latent)).sample)
    ours = jax.jit(lambda p, z: model.apply(p, z, method=AutoencoderKL.decode))(params, latent)
    assert ours.shape == (2, HEIGHT, WIDTH, 3)
    assert relative_error(ours, reference) <= 1e-4


def test_sampled_reconstruction_uses_the_posterior():
    """__call__ wiring, on a one-level model with random parameters (run eagerly: tiny graph)."""
    minimal = dict(TINY, channels=8, channel_mult=(1,), num_res_blocks=1, norm_groups=4)
    model = AutoencoderKL(**minimal)
    image = image_batch()[:, :8, :6]
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), image))
    rng = np.random.default_rng(5)
    params = jax.tree.map(
        lambda leaf: 0.3 * rng.standard_normal(leaf.shape).astype(np.float32), shapes
    )
    key = jax.random.key(4)
    reconstruction, posterior = model.apply(params, image, key, sample_posterior=True)
    noise = jax.random.normal(key, posterior.mean.shape)
    z = posterior.mean + jnp.exp(0.5 * posterior.logvar) * noise
    expected = model.apply(params, z, method=AutoencoderKL.decode)
    assert reconstruction.shape == image.shape
    assert relative_error(reconstruction, expected) <= 1e-5
    mode_reconstruction, _ = model.apply(params, image)
    assert relative_error(mode_reconstruction, expected) > 1e-3  # the sample differs from the mean
    with pytest.raises(ValueError, match="rng"):
        model.apply(params, image, sample_posterior=True)


def test_every_parameter_has_distinct_logical_axis_names():
    image = np.zeros((1, HEIGHT, WIDTH, 3), np.float32)
    boxed = jax.eval_shape(AutoencoderKL(**TINY).init, jax.random.key(0), image)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim and None not in leaf.names
        assert len(set(leaf.names)) == len(leaf.names), leaf.names


def test_released_config_is_laid_out_as_diffusers():
    """kl-f8 (channels 128, mult (1, 2, 4, 4)): every diffusers key and shape maps onto ours."""
    image = np.zeros((1, 256, 176, 3), np.float32)
    shapes = jax.eval_shape(AutoencoderKL(**KL_F8_VAE).init, jax.random.key(0), image)
    with torch.device("meta"):
        reference = diffusers_vae(KL_F8_VAE)
    torch_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert len(match_torch_keys(torch_shapes, shapes, source="meta VAE")) == len(torch_shapes)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(shapes)))
    assert count == sum(p.numel() for p in reference.parameters())
