"""Edits that keep the rest: blended sampling against a float64 loop written from its definition,
and the inferred edit region against hand-made noise predictors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upgpt_jax.diffusion import NoiseSchedule, sample, sampling_timesteps
from upgpt_jax.diffusion.editing import edit_region

T = 1000
SCHEDULE = NoiseSchedule.create("sqrt_linear", 0.00085, 0.012, T)
ABAR = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
SHAPE = (2, 6, 4, 3)  # (B, h, w, C)
_draw = np.random.default_rng(0)
X_T = _draw.standard_normal(SHAPE)
X0_KEPT = _draw.standard_normal(SHAPE)
REGION = (_draw.uniform(size=SHAPE[:3] + (1,)) > 0.5).astype(np.float64)
LINEAR_MAP = 0.9 * np.eye(SHAPE[-1]) + 0.1 * _draw.standard_normal((SHAPE[-1], SHAPE[-1]))
NUM_STEPS = 10


def linear_eps(x, t, xp):
    """A fixed t-dependent linear noise predictor (numpy or JAX)."""
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return (x @ xp.asarray(LINEAR_MAP, dtype=x.dtype)) * (0.5 + t / T) + 0.05 * xp.sin(t / 100.0)


@functools.partial(jax.jit, static_argnums=(2,))
def _blended(x_T, keep, num_steps):
    return sample(functools.partial(linear_eps, xp=jnp), SCHEDULE, x_T, None, method="ddim", num_steps=num_steps,
                  keep=keep)


def blended_reference(region):
    """Deterministic DDIM, then region * x_prev + (1 - region) * (sqrt(abar_prev) x0_kept +
    sqrt(1 - abar_prev) x_T) after each step, and x0_kept itself outside the region at the end."""
    timesteps = sampling_timesteps("ddim", NUM_STEPS, T)
    previous = np.append(timesteps[1:], 0)
    x = X_T.copy()
    for index, (t, p) in enumerate(zip(timesteps, previous)):
        eps = linear_eps(x, np.full(SHAPE[0], float(t)), np)
        x0 = (x - np.sqrt(1 - ABAR[t]) * eps) / np.sqrt(ABAR[t])
        x = np.sqrt(ABAR[p]) * x0 + np.sqrt(1 - ABAR[p]) * eps
        last = index == len(timesteps) - 1
        kept = X0_KEPT if last else np.sqrt(ABAR[p]) * X0_KEPT + np.sqrt(1 - ABAR[p]) * X_T
        x = region * x + (1 - region) * kept
    return x


def test_blended_sampling_matches_its_definition():
    keep = (jnp.asarray(X0_KEPT, jnp.float32), jnp.asarray(REGION, jnp.float32))
    ours = _blended(jnp.asarray(X_T, jnp.float32), keep, NUM_STEPS)
    expected = blended_reference(REGION)
    np.testing.assert_allclose(np.asarray(ours), expected, atol=2e-5 * np.abs(expected).max())
    outside = np.broadcast_to(REGION == 0, SHAPE)
    np.testing.assert_array_equal(np.asarray(ours)[outside], np.float32(X0_KEPT)[outside])  # ends on it exactly


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("dpmpp_2m", 0.0), ("ddim", 1.0)])
def test_every_sampler_ends_on_the_kept_sample_outside_the_region(method, eta):
    """The ancestral and the multistep samplers end noise-free anyway; stochastic DDIM at abar_0."""
    keep = (jnp.asarray(X0_KEPT, jnp.float32), jnp.asarray(REGION, jnp.float32))
    run = jax.jit(lambda x, rng: sample(functools.partial(linear_eps, xp=jnp), SCHEDULE, x, rng, method=method,
                                        num_steps=NUM_STEPS, eta=eta, keep=keep))
    ours = np.asarray(run(jnp.asarray(X_T, jnp.float32), jax.random.key(0)))
    outside = np.broadcast_to(REGION == 0, SHAPE)
    np.testing.assert_array_equal(ours[outside], np.float32(X0_KEPT)[outside])
    assert np.all(np.isfinite(ours)) and not np.allclose(ours[~outside], np.float32(X0_KEPT)[~outside], atol=0.1)


def test_a_full_region_is_the_plain_sample():
    x_T = jnp.asarray(X_T, jnp.float32)
    eps_fn = functools.partial(linear_eps, xp=jnp)
    plain = jax.jit(lambda x: sample(eps_fn, SCHEDULE, x, None, num_steps=NUM_STEPS))(x_T)
    full = _blended(x_T, (jnp.asarray(X0_KEPT, jnp.float32), jnp.ones(SHAPE[:3] + (1,))), NUM_STEPS)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(plain))
    np.testing.assert_allclose(np.asarray(full), blended_reference(np.ones_like(REGION)), rtol=1e-4, atol=1e-5)


def _probes(count=3):
    return jnp.asarray(np.random.default_rng(1).standard_normal((count,) + SHAPE), jnp.float32)


def test_the_edit_region_is_where_the_predictions_differ_most():
    """Edited predictions = unedited ones + a bump of height 1 inside a block, 0.3 on a second block
    and 0 elsewhere: the normalised difference is 1 / 0.3 / 0, so threshold 0.5 finds the first
    block, 0.2 both."""
    first, second = np.zeros(SHAPE[:3] + (1,)), np.zeros(SHAPE[:3] + (1,))
    first[0, 1:3, 1:3], first[1, 4:, :2] = 1, 1
    second[0, 4, 3], second[1, 0, 0] = 1, 1
    bump = jnp.asarray(first + 0.3 * second, jnp.float32)
    unedited = functools.partial(linear_eps, xp=jnp)

    def edited(x, t):
        return unedited(x, t) + bump * jnp.asarray([1.0, -1.0, 1.0])  # signs differ per channel: |.| averages them

    x0 = jnp.asarray(X0_KEPT, jnp.float32)
    np.testing.assert_array_equal(np.asarray(edit_region(unedited, edited, SCHEDULE, x0, _probes(), threshold=0.5)),
                                  first)
    np.testing.assert_array_equal(np.asarray(edit_region(unedited, edited, SCHEDULE, x0, _probes(), threshold=0.2)),
                                  first + second)


def test_no_change_is_an_empty_region_and_noises_must_match():
    unedited = functools.partial(linear_eps, xp=jnp)
    x0 = jnp.asarray(X0_KEPT, jnp.float32)
    assert not np.asarray(edit_region(unedited, unedited, SCHEDULE, x0, _probes())).any()
    with pytest.raises(ValueError, match=r"noises must be \(K,\) \+ x0's shape"):
        edit_region(unedited, unedited, SCHEDULE, x0, _probes()[:, :1])


def test_the_region_is_read_at_its_timestep():
    """The predictors differ only at t = round(0.7 (T - 1)) = 699 (REGION_TIMESTEP_FRACTION)."""
    unedited = functools.partial(linear_eps, xp=jnp)

    def edited(x, t):
        return unedited(x, t) + jnp.where(t[:, None, None, None] == 699, 1.0, 0.0)

    region = edit_region(unedited, edited, SCHEDULE, jnp.asarray(X0_KEPT, jnp.float32), _probes())
    assert np.asarray(region).all()
