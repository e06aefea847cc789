"""The noise schedule against diffusers' DDPMScheduler (an independent implementation)."""
import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from upgpt_jax.diffusion import NoiseSchedule, make_betas


@pytest.mark.parametrize("ours, theirs", [("sqrt_linear", "scaled_linear"), ("linear", "linear")])
def test_alphas_cumprod_match_diffusers(ours, theirs):
    schedule = NoiseSchedule.create(ours, 0.00085, 0.012, 1000)
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule=theirs)
    np.testing.assert_allclose(schedule.betas, reference.betas.numpy(), rtol=1e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=1e-5)


def test_add_noise_matches_diffusers_and_inverts():
    schedule = NoiseSchedule.create()
    reference = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 8, 6, 4)).astype(np.float32)
    noise = rng.standard_normal((3, 8, 6, 4)).astype(np.float32)
    t = np.array([0, 499, 999])
    ours = schedule.add_noise(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
    theirs = reference.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t))
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(schedule.predict_x0(ours, jnp.asarray(noise), jnp.asarray(t)), x0,
                               rtol=1e-3, atol=1e-3)


def test_endpoints_by_hand():
    betas = make_betas("sqrt_linear", 0.00085, 0.012, 1000)
    assert betas[0] == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1] == pytest.approx(0.012, rel=1e-12)
    assert np.sqrt(betas[1]) - np.sqrt(betas[0]) == pytest.approx((0.012**0.5 - 0.00085**0.5) / 999, rel=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="cosine"), "diffusion.schedule"),
    (dict(num_timesteps=0), "num_timesteps"),
    (dict(beta_start=0.02, beta_end=0.01), "beta_start"),
])
def test_bad_schedule_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule.create(**kwargs)
