"""The assembled UPGPT model: parameter tree, sizes of the released config, latents, loss."""
import diffusers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from references import KL_F8_VAE, diffusers_vae
from upgpt_jax.config_base import DEFAULT_AXIS_RULES
from upgpt_jax.diffusion import NoiseSchedule, eps_loss
from upgpt_jax.models.upgpt import build_model, example_inputs, init_params


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_released_config_sizes_without_allocating():
    from configs import upgpt_256

    config = upgpt_256.get_config()
    model = build_model(config.model)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **example_inputs(config.model)))
    params = nn.unbox(shapes)["params"]
    assert round(_count(params["unet"]) / 1e6, 1) == 425.3
    with torch.device("meta"):
        reference_vae = diffusers_vae(KL_F8_VAE)
    assert _count(params["vae"]) == sum(p.numel() for p in reference_vae.parameters())
    fusion = params["fusion"]
    assert fusion["pose_proj"]["kernel"].shape == (85, 768)
    assert fusion["null_text"].shape == (77, 768) and fusion["null_style"].shape == (9, 768)


def test_every_parameter_has_logical_axes_covered_by_the_rules(tiny_config):
    model = build_model(tiny_config.model)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **example_inputs(tiny_config.model)))
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(specs) == len(jax.tree.leaves(nn.unbox(boxed)))
    known = {name for name, _ in DEFAULT_AXIS_RULES}
    used = {axis for spec in specs for axis in spec}
    assert None not in used and used <= known, used - known


def test_latents_round_trip_shapes_and_scale(tiny_model, tiny_config):
    model, params = tiny_model
    images = jax.random.uniform(jax.random.key(1), (2, 64, 48, 3), minval=-1, maxval=1)
    latents = model.apply({"params": params}, images, method=model.encode)
    downsample = 2 ** (len(tiny_config.model.vae.channel_mult) - 1)
    assert latents.shape == (2, 64 // downsample, 48 // downsample, tiny_config.model.vae.z_channels)
    posterior = model.apply({"params": params}, images, method=model.posterior)
    np.testing.assert_allclose(latents, posterior.mean * tiny_config.model.scale_factor, rtol=1e-6)
    sampled = model.apply({"params": params}, images, jax.random.key(2), method=model.encode)
    assert not np.allclose(sampled, latents)
    decoded = model.apply({"params": params}, latents, method=model.decode)
    direct = model.apply({"params": params}, posterior.mean, method=lambda m, z: m.vae.decode(z))
    np.testing.assert_allclose(decoded, direct, rtol=1e-4, atol=1e-5)


def test_fresh_init_zero_initialises_outputs(tiny_config, tiny_model):
    model = build_model(tiny_config.model)
    params = init_params(model, tiny_config.model, seed=0)
    assert jax.tree.structure(params) == jax.tree.structure(tiny_model[1])
    # As LDM: the UNet's last conv starts at zero, so a fresh model predicts eps = 0.
    assert not np.any(params["unet"]["conv_out"]["kernel"])
    assert np.std(params["unet"]["conv_in"]["kernel"]) > 0


def _batch(config, batch_size=2, seed=3):
    rng = np.random.default_rng(seed)
    inputs = example_inputs(config.model, batch_size)
    return dict(
        latents=rng.standard_normal((batch_size, 8, 6, config.model.latent_channels)).astype(np.float32),
        person_mask=np.sign(rng.standard_normal((batch_size, 8, 6, 1))).astype(np.float32),
        text=rng.standard_normal(inputs["text"].shape).astype(np.float32),
        style=rng.standard_normal(inputs["style"].shape).astype(np.float32),
        pose=rng.standard_normal(inputs["pose"].shape).astype(np.float32),
    )


def test_eps_loss_is_mse_against_the_noise_on_diffusers_noised_latents(tiny_model, tiny_config):
    model, params = tiny_model
    schedule = NoiseSchedule.from_config(tiny_config.diffusion)
    batch = _batch(tiny_config)
    rng = jax.random.key(7)
    loss, metrics = eps_loss(model, params, batch, schedule, rng)

    # Recompute with diffusers' scheduler for x_t and a direct call of the denoiser.
    t_rng, noise_rng, _ = jax.random.split(rng, 3)
    timesteps = np.asarray(jax.random.randint(t_rng, (2,), 0, 1000))
    noise = np.asarray(jax.random.normal(noise_rng, batch["latents"].shape))
    np.testing.assert_array_equal(metrics["timesteps"], timesteps)
    reference = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    noisy = reference.add_noise(torch.from_numpy(batch["latents"]), torch.from_numpy(noise),
                                torch.from_numpy(timesteps)).numpy()

    def predict(module):
        context = module.context(batch["text"], batch["style"], batch["pose"])
        return module.denoise(jnp.asarray(noisy), batch["person_mask"], timesteps, context)

    eps = np.asarray(model.apply({"params": params}, method=predict))
    expected = ((eps - noise) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics["loss_per_example"], expected, rtol=1e-4)
    assert float(loss) == pytest.approx(expected.mean(), rel=1e-4)

    weights = np.ones((2, 8, 6, 1), np.float32)
    weights[:, :4] = 5.0  # e.g. the original's face weight
    weighted, _ = eps_loss(model, params, dict(batch, loss_weights=weights), schedule, rng)
    expected_weighted = (((eps - noise) ** 2) * weights).mean()
    assert float(weighted) == pytest.approx(expected_weighted, rel=1e-4)

    # Min-SNR-5: per example min(SNR, 5) / SNR, SNR from diffusers' alphas_cumprod.
    abar = reference.alphas_cumprod.numpy()[timesteps].astype(np.float64)
    snr = abar / (1 - abar)
    _, min_snr = eps_loss(model, params, batch, schedule, rng, snr_gamma=5.0)
    np.testing.assert_allclose(min_snr["loss_per_example"], expected * np.minimum(snr, 5.0) / snr, rtol=1e-4)


def test_loss_gradients_reach_unet_and_fusion_only(tiny_model, tiny_config):
    model, params = tiny_model
    schedule = NoiseSchedule.from_config(tiny_config.diffusion)
    batch = _batch(tiny_config)
    grads = jax.jit(jax.grad(lambda p: eps_loss(model, p, batch, schedule, jax.random.key(0))[0]))(params)
    norms = {name: float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree)))) for name, tree in grads.items()}
    assert norms["unet"] > 0 and norms["fusion"] > 0
    assert norms["vae"] == 0.0


def test_mask_at_wrong_resolution_is_rejected(tiny_model):
    model, params = tiny_model
    with pytest.raises(ValueError, match="person_mask"):
        model.apply({"params": params}, jnp.zeros((1, 8, 6, 4)), jnp.zeros((1, 64, 48, 1)), jnp.zeros((1,)),
                    jnp.zeros((1, 87, 64)), method=model.denoise)
