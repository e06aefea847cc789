"""Samplers against closed forms and against diffusers' PyTorch schedulers.

Gaussian data x0 ~ N(m, s^2) (per coordinate) has an exact noise predictor,
eps(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) m) / (abar_t s^2 + 1 - abar_t), under which a
DDIM step maps y = x_t - sqrt(abar_t) m affinely, and the probability-flow ODE maps
y / sqrt(abar s^2 + 1 - abar) to itself; both give float64 references derived here by hand.
"""
import functools

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_ddpm

from upgpt_jax.diffusion import SAMPLERS, NoiseSchedule, sample, sampling_timesteps

T = 1000
SCHEDULE = NoiseSchedule.create("sqrt_linear", 0.00085, 0.012, T)
DIFFUSERS_SCHEDULE = dict(num_train_timesteps=T, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
ABAR64 = np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, T) ** 2)  # LDM's "linear", in float64.
SHAPE = (2, 4, 3, 2)
_draw = np.random.default_rng(0)
MEAN = _draw.standard_normal(SHAPE)
STD = _draw.uniform(0.3, 2.0, SHAPE)
X_T = _draw.standard_normal(SHAPE)
LINEAR_MAP = 0.9 * np.eye(SHAPE[-1]) + 0.1 * _draw.standard_normal((SHAPE[-1], SHAPE[-1]))


def relative_error(ours, reference) -> float:
    reference = np.asarray(reference, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference)))


def gaussian_eps_fn(mean, std):
    """The exact eps for x0 ~ N(mean, std^2), in JAX (1 - abar from the cancellation-free table)."""
    def eps_fn(x, t):
        shape = (-1,) + (1,) * (x.ndim - 1)
        sqrt_abar = SCHEDULE.sqrt_alphas_cumprod[t].reshape(shape)
        one_minus = jnp.square(SCHEDULE.sqrt_one_minus_alphas_cumprod[t]).reshape(shape)
        return jnp.sqrt(one_minus) * (x - sqrt_abar * mean) / (sqrt_abar**2 * std**2 + one_minus)
    return eps_fn


def linear_eps(x, t, xp):
    """A fixed t-dependent linear noise predictor, for numpy/torch (xp) and JAX alike."""
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return (x @ xp.asarray(LINEAR_MAP, dtype=x.dtype)) * (0.5 + t / T) + 0.05 * xp.sin(t / 100.0)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _jitted_sample(x_T, rng, eps_fn, method, num_steps, eta):
    return sample(eps_fn, SCHEDULE, x_T, rng, method=method, num_steps=num_steps, eta=eta)


def run(x_T, rng, *, eps_fn, method, num_steps, eta=0.0):
    """The sampler under jit; equal settings share one compilation (static arguments normalised)."""
    return _jitted_sample(x_T, rng, eps_fn, method, num_steps, float(eta))


def gaussian_ode_solution(x_T, abar_start, abar_end):
    """Exact probability-flow ODE solution from noise level abar_start to abar_end (float64)."""
    scale = np.sqrt((abar_end * STD**2 + 1 - abar_end) / (abar_start * STD**2 + 1 - abar_start))
    return np.sqrt(abar_end) * MEAN + scale * (x_T - np.sqrt(abar_start) * MEAN)


@pytest.mark.parametrize("num_steps", [50, 7])
def test_ddim_matches_closed_form_on_gaussian_data(num_steps):
    timesteps = (np.arange(0, T, T // num_steps) + 1)[::-1]  # LDM's "uniform": 8 steps for 7.
    previous = np.append(timesteps[1:], 0)
    np.testing.assert_array_equal(sampling_timesteps("ddim", num_steps, T), timesteps)
    y = X_T - np.sqrt(ABAR64[timesteps[0]]) * MEAN
    for t, p in zip(timesteps, previous):
        a, a_prev = ABAR64[t], ABAR64[p]
        y = y * (np.sqrt(a_prev * a) * STD**2 + np.sqrt((1 - a_prev) * (1 - a))) / (a * STD**2 + 1 - a)
    expected = y + np.sqrt(ABAR64[0]) * MEAN
    ours = run(jnp.asarray(X_T, jnp.float32), None, eps_fn=gaussian_eps_fn(MEAN, STD), method="ddim",
               num_steps=num_steps)
    assert relative_error(ours, expected) < 1e-5


def test_ddim_converges_to_the_ode_solution_and_dpmpp_2m_is_closer():
    """Both integrate the probability-flow ODE; DPM-Solver++ 2M to second order.

    DDIM ends at abar_0; DPM-Solver++ (final sigma zero) ends with a jump from its last timestep
    straight to E[x0 | x_t], here m + sqrt(abar) s^2 / (abar s^2 + 1 - abar) (x_t - sqrt(abar) m):
    each is compared with the exact ODE solution followed by that same final map.
    """
    x_T = jnp.asarray(X_T, jnp.float32)
    eps_fn = gaussian_eps_fn(MEAN, STD)

    def error(method, num_steps):
        timesteps = sampling_timesteps(method, num_steps, T)
        if method == "ddim":
            exact = gaussian_ode_solution(X_T, ABAR64[timesteps[0]], ABAR64[0])
        else:
            a = ABAR64[timesteps[-1]]
            y = gaussian_ode_solution(X_T, ABAR64[timesteps[0]], a) - np.sqrt(a) * MEAN
            exact = MEAN + np.sqrt(a) * STD**2 / (a * STD**2 + 1 - a) * y
        return relative_error(run(x_T, None, eps_fn=eps_fn, method=method, num_steps=num_steps), exact)

    ddim_20, ddim_500, dpmpp_20 = error("ddim", 20), error("ddim", 500), error("dpmpp_2m", 20)
    assert ddim_500 < 3e-3 and ddim_500 < ddim_20 / 10
    assert dpmpp_20 < ddim_20 / 10


@jax.jit
def _noise(rng, index):
    """The documented noise of step `index`."""
    return jax.random.normal(jax.random.fold_in(rng, index), SHAPE, jnp.float32)


def _noises(rng, count):
    return [np.asarray(_noise(rng, i), np.float64) for i in range(count)]


def _drive(scheduler, step_kwargs=lambda index: {}):
    """Runs a diffusers scheduler in float64 with our float32 abar table (isolating the algorithm)."""
    x = torch.from_numpy(X_T)
    for index, t in enumerate(scheduler.timesteps):
        eps = linear_eps(x, torch.full((SHAPE[0],), float(t), dtype=torch.float64), torch)
        x = scheduler.step(eps, t, x, **step_kwargs(index)).prev_sample
    return x.numpy()


def _with_our_abar(scheduler):
    scheduler.alphas_cumprod = torch.from_numpy(np.asarray(SCHEDULE.alphas_cumprod, np.float64))
    return scheduler


jax_linear_eps = functools.partial(linear_eps, xp=jnp)


# The stochastic samplers run with these settings throughout, so that each compiles once.
STOCHASTIC = {"ddim": dict(num_steps=50, eta=0.5), "ddpm": dict(num_steps=50, eta=0.0)}
DETERMINISTIC = {"ddim": dict(num_steps=50, eta=0.0), "dpmpp_2m": dict(num_steps=20, eta=0.0)}


@pytest.mark.parametrize("eta", [0.0, STOCHASTIC["ddim"]["eta"]])
def test_ddim_matches_diffusers(eta):
    num_steps, rng = STOCHASTIC["ddim"]["num_steps"], jax.random.key(1)
    scheduler = _with_our_abar(diffusers.DDIMScheduler(**DIFFUSERS_SCHEDULE, set_alpha_to_one=False, steps_offset=1,
                                                       clip_sample=False))
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    scheduler.set_timesteps(num_steps)
    timesteps = sampling_timesteps("ddim", num_steps, T)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps)
    assert (timesteps[0], timesteps[-1]) == (981, 1)  # LDM's range(0, 1000, 20) + 1, descending.
    noises = _noises(rng, num_steps)
    reference = _drive(scheduler, lambda i: dict(eta=eta, variance_noise=torch.from_numpy(noises[i]) if eta else None))
    ours = run(jnp.asarray(X_T, jnp.float32), rng, eps_fn=jax_linear_eps, method="ddim", num_steps=num_steps, eta=eta)
    assert relative_error(ours, reference) < 1e-4


@pytest.mark.parametrize("num_steps", [T, STOCHASTIC["ddpm"]["num_steps"]])
def test_ddpm_matches_diffusers_with_the_same_noise(num_steps, monkeypatch):
    rng = jax.random.key(2)
    scheduler = _with_our_abar(diffusers.DDPMScheduler(**DIFFUSERS_SCHEDULE, clip_sample=False))
    scheduler.set_timesteps(num_steps)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), sampling_timesteps("ddpm", num_steps, T))
    noises = iter(_noises(rng, num_steps))  # diffusers draws at every step but the last (t = 0), as we use them.
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *args, **kwargs: torch.from_numpy(next(noises)))
    reference = _drive(scheduler)
    ours = run(jnp.asarray(X_T, jnp.float32), rng, eps_fn=jax_linear_eps, method="ddpm", num_steps=num_steps)
    assert relative_error(ours, reference) < 1e-4


@pytest.mark.parametrize("num_steps", [20, 5])
def test_dpmpp_2m_matches_diffusers(num_steps):
    scheduler = _with_our_abar(diffusers.DPMSolverMultistepScheduler(**DIFFUSERS_SCHEDULE))
    assert (scheduler.config.algorithm_type, scheduler.config.solver_order, scheduler.config.solver_type,
            scheduler.config.final_sigmas_type) == ("dpmsolver++", 2, "midpoint", "zero")
    scheduler.set_timesteps(num_steps)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), sampling_timesteps("dpmpp_2m", num_steps, T))
    reference = _drive(scheduler)
    ours = run(jnp.asarray(X_T, jnp.float32), None, eps_fn=jax_linear_eps, method="dpmpp_2m", num_steps=num_steps)
    assert relative_error(ours, reference) < 1e-4


def test_ddpm_samples_the_gaussian_data_distribution():
    mean, std, count = 0.7, 0.5, 8192
    x_T = jax.random.normal(jax.random.key(3), (count,))
    rng = jax.random.key(4, impl="rbg")  # Any key type; this one compiles faster on CPU.
    samples = np.asarray(run(x_T, rng, eps_fn=gaussian_eps_fn(mean, std), method="ddpm", num_steps=T))
    assert abs(samples.mean() - mean) < 4 * std / np.sqrt(count)
    assert abs(samples.std() / std - 1) < 0.03


@pytest.mark.parametrize("method", STOCHASTIC)
def test_noise_follows_the_rng(method):
    x_T = jnp.asarray(X_T, jnp.float32)
    draw = functools.partial(run, x_T, eps_fn=jax_linear_eps, method=method, **STOCHASTIC[method])
    first, again, other = draw(jax.random.key(5)), draw(jax.random.key(5)), draw(jax.random.key(6))
    np.testing.assert_array_equal(first, again)
    assert relative_error(other, first) > 1e-2

    # One key per example: an example's sample depends on its own key only, not on its batch mates'.
    keys = jax.random.split(jax.random.key(5), 3)
    pair, swapped_mate = draw(keys[:2]), draw(jnp.stack([keys[0], keys[2]]))
    np.testing.assert_array_equal(pair[0], swapped_mate[0])
    assert relative_error(swapped_mate[1], pair[1]) > 1e-2
    # ... and each draws normal(fold_in(key_b, i), x_T.shape[1:]) at step i, as a batch of one would.
    alone = run(x_T[1:], keys[1:2], eps_fn=jax_linear_eps, method=method, **STOCHASTIC[method])
    np.testing.assert_allclose(alone[0], pair[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 keys for a batch of 2"):
        draw(keys)
    # A raw uint32 key (shape (2,)) is one key, not two, even for a batch of two.
    np.testing.assert_array_equal(draw(jax.random.PRNGKey(5)), draw(jax.random.PRNGKey(5)))
    assert relative_error(draw(jax.random.PRNGKey(5)), draw(jax.random.PRNGKey(6))) > 1e-2


@pytest.mark.parametrize("method", SAMPLERS)
def test_one_scan_under_jit_with_a_traced_schedule(method):
    traces = []

    def eps_fn(x, t):
        traces.append(t.shape)
        return jax_linear_eps(x, t)

    settings = DETERMINISTIC.get(method) or STOCHASTIC[method]  # Shares compilations with the tests above.

    def sampler(schedule, x_T, rng):
        return sample(eps_fn, schedule, x_T, rng, method=method, **settings)

    x_T, rng = jnp.asarray(X_T, jnp.float32), jax.random.key(7)
    jaxpr = jax.make_jaxpr(sampler)(SCHEDULE, x_T, rng)
    loops = [eqn.primitive.name for eqn in jaxpr.eqns if eqn.primitive.name in ("scan", "while")]
    assert loops == ["scan"] and traces == [(SHAPE[0],)]
    traced_schedule = jax.jit(sampler)(SCHEDULE, x_T, rng)
    closed_over = run(x_T, rng, eps_fn=jax_linear_eps, method=method, **settings)
    np.testing.assert_allclose(traced_schedule, closed_over, rtol=1e-6, atol=1e-6)


def test_low_precision_model_output_and_any_shape():
    x_T = jax.random.normal(jax.random.key(8), (3, 5))
    mean, std = 0.3, 0.8
    exact = gaussian_eps_fn(mean, std)
    full = run(x_T, None, eps_fn=exact, method="dpmpp_2m", num_steps=10)
    half = run(x_T.astype(jnp.bfloat16), None, eps_fn=lambda x, t: exact(x, t).astype(jnp.bfloat16),
               method="dpmpp_2m", num_steps=10)
    assert full.shape == (3, 5) and half.dtype == jnp.bfloat16
    assert relative_error(half, full) < 3e-2


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="euler"), "ddim, ddpm, dpmpp_2m"),
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=T + 1), "num_steps"),
    (dict(num_steps=10.0), "num_steps"),
    (dict(num_steps=T), "reach timestep 1000"),  # DDIM's +1 offset leaves at most T // 2 steps.
    (dict(method="dpmpp_2m", num_steps=T), "repeat timesteps"),
    (dict(eta=-0.1), "eta"),
    (dict(method="ddpm", eta=0.5, rng=jax.random.key(0)), "eta"),
    (dict(method="ddpm"), "rng"),
    (dict(eta=0.5), "rng"),
])
def test_bad_arguments_are_named(kwargs, message):
    arguments = dict(method="ddim", num_steps=10, eta=0.0, rng=None) | kwargs
    rng = arguments.pop("rng")
    with pytest.raises(ValueError, match=message):
        sample(jax_linear_eps, SCHEDULE, jnp.zeros(SHAPE), rng, **arguments)
