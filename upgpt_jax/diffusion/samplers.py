"""Samplers of the reverse diffusion process: DDIM, ancestral DDPM and DPM-Solver++ 2M.

All three are written as one linear update per step,

    x_next = a * x + b * x0 + c * eps + d * noise + e * x0_previous_step,

where eps = eps_fn(x, t), x0 = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t) and the per-step
coefficients (a, b, c, d, e) are tables computed before the loop. So the whole loop is one
`lax.scan` whose body calls the model once, and the samplers differ only in their tables.

Precision: the tables are computed inside the traced function, in float32, from the schedule's
float32 tables (which `NoiseSchedule` computes in float64), using forms without cancellation:
1 - abar comes from `sqrt_one_minus_alphas_cumprod`, and a step's beta (1 - abar_t / abar_prev)
from the product of (1 - beta) over the training steps it spans. They agree with LDM's
float64-precomputed, float32-stored constants to a few float32 ulp. LDM's DDIMSampler itself
evaluates sqrt(abar_t) and sqrt(1 - abar_prev - sigma^2) in float32 at run time. The sample is
accumulated in float32 whatever the dtype of the model's output.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from upgpt_jax.diffusion.schedule import NoiseSchedule

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
"""(x_t (B, ...), t int32 (B,)) -> predicted noise, same shape as x_t."""

SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")

_STOCHASTIC = ("ddpm",)


def sampling_timesteps(method: str, num_steps: int, num_timesteps: int) -> np.ndarray:
    """The training timesteps a sampler visits, descending (static ints).

    - "ddim": LDM's "uniform" discretisation, range(0, T, T // num_steps) + 1 (diffusers'
      DDIMScheduler with timestep_spacing="leading", steps_offset=1). As in LDM, when num_steps
      does not divide T this visits more than num_steps timesteps (e.g. 31 for 30 of 1000).
    - "ddpm": diffusers' DDPMScheduler "leading" spacing, range(num_steps) * (T // num_steps);
      num_steps == T is every timestep, LDM's p_sample loop.
    - "dpmpp_2m": diffusers' DPMSolverMultistepScheduler "linspace" spacing,
      round(linspace(0, T - 1, num_steps + 1))[::-1][:-1].
    """
    _check_method_and_steps(method, num_steps, num_timesteps)
    if method == "ddim":
        timesteps = np.arange(0, num_timesteps, num_timesteps // num_steps) + 1
    elif method == "ddpm":
        timesteps = np.arange(num_steps) * (num_timesteps // num_steps)
    else:
        timesteps = np.linspace(0, num_timesteps - 1, num_steps + 1).round()[1:]
    timesteps = timesteps[::-1].astype(np.int32)
    if timesteps[0] >= num_timesteps or np.any(np.diff(timesteps) >= 0):
        problem = f"reach timestep {timesteps[0]}" if timesteps[0] >= num_timesteps else "repeat timesteps"
        raise ValueError(f"{method} with num_steps={num_steps} of {num_timesteps} training timesteps would {problem}; "
                         "use fewer steps")
    return timesteps


def sample(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array | None, *,
           method: str = "ddim", num_steps: int = 50, eta: float = 0.0,
           keep: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """Runs the reverse process from noise x_T (B, ...) and returns the final sample (x_0).

    `method`, `num_steps` and `eta` are static. `eta` (DDIM only) scales the per-step noise from
    0 (deterministic DDIM) to 1 (DDPM-like). `rng` may be None when the sampler is deterministic
    ("ddim" with eta == 0, "dpmpp_2m"); the noise of step i (0 = the first, noisiest step) is
    `jax.random.normal(jax.random.fold_in(rng, i), x_T.shape, float32)`; with a batch of B keys
    (shape (B,)) each example draws its own, `normal(fold_in(rng[b], i), x_T.shape[1:])`, so that an
    example's sample does not depend on the batch it was drawn in. DDIM returns the sample at
    the noise level of training step 0, as LDM's DDIMSampler does; the others end noise-free.
    The result has x_T's dtype. Wrap the call in `jax.jit`: the loop is a single `lax.scan`.

    `keep` = (x0_kept, region), both broadcastable to x_T, region in [0, 1]: blended sampling
    (Blended Latent Diffusion, Avrahami et al. 2023). After every step the sample is
    region * x_next + (1 - region) * (x0_kept noised to the step's target level with the noise
    x_T), so outside the region the process follows x0_kept and ends on it exactly, while the
    inside is drawn to fit it.
    """
    timesteps = sampling_timesteps(method, num_steps, schedule.num_timesteps)
    if eta < 0 or (eta != 0 and method != "ddim"):
        raise ValueError(f"eta must be >= 0 and is only used by 'ddim' (0 for {method!r}), got {eta}")
    stochastic = method in _STOCHASTIC or eta > 0
    if stochastic and rng is None:
        raise ValueError(f"sampler {method!r} with eta={eta} draws noise: pass an rng key")
    if x_T.ndim < 1:
        raise ValueError(f"x_T must have a leading batch dimension, got shape {x_T.shape}")
    # One key, or one per example: typed keys are scalars, raw uint32 keys (PRNGKey) are (2,) rows.
    per_example = stochastic and jnp.ndim(rng) == (1 if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else 2)
    if per_example and rng.shape[0] != x_T.shape[0]:
        raise ValueError(f"rng holds {rng.shape[0]} keys for a batch of {x_T.shape[0]}: pass one key or one per example")

    tables = _TABLES[method](schedule, timesteps, eta)
    per_step = dict(tables, t=jnp.asarray(timesteps), index=jnp.arange(len(timesteps)))
    batch_shape = (x_T.shape[0],)
    start = x_T.astype(jnp.float32)

    def step(carry, step_values):
        x, x0_previous = carry
        eps = eps_fn(x, jnp.full(batch_shape, step_values["t"], jnp.int32)).astype(jnp.float32)
        x0 = (x - step_values["sqrt_one_minus_abar"] * eps) / step_values["sqrt_abar"]
        x_next = (step_values["a"] * x + step_values["b"] * x0 + step_values["c"] * eps
                  + step_values["e"] * x0_previous)
        if stochastic:
            if per_example:
                noise = jax.vmap(lambda key: jax.random.normal(
                    jax.random.fold_in(key, step_values["index"]), x.shape[1:], jnp.float32))(rng)
            else:
                noise = jax.random.normal(jax.random.fold_in(rng, step_values["index"]), x.shape, jnp.float32)
            x_next = x_next + step_values["d"] * noise
        if keep is not None:
            x0_kept, region = keep
            kept = step_values["kept_signal"] * x0_kept + step_values["kept_noise"] * start
            x_next = region * x_next + (1.0 - region) * kept
        return (x_next, x0), None

    final, _ = jax.lax.scan(step, (start, jnp.zeros_like(start)), per_step)
    return final[0].astype(x_T.dtype)


def _check_method_and_steps(method: str, num_steps: int, num_timesteps: int) -> None:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; expected one of {', '.join(SAMPLERS)}")
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an int in [1, {num_timesteps}] (the training timesteps), "
                         f"got {num_steps!r}")


class _Levels:
    """Noise levels at the visited timesteps and at each step's target ("prev") timestep.

    A prev index of -1 means the clean end of the process (abar = 1).
    """

    def __init__(self, schedule: NoiseSchedule, timesteps: np.ndarray, final_prev: int):
        prev = np.append(timesteps[1:], final_prev)
        prev_index = np.where(prev < 0, schedule.num_timesteps, prev)
        self.sqrt_abar = schedule.sqrt_alphas_cumprod[timesteps]
        self.sqrt_one_minus_abar = schedule.sqrt_one_minus_alphas_cumprod[timesteps]
        self.sqrt_abar_prev = jnp.append(schedule.sqrt_alphas_cumprod, 1.0)[prev_index]
        self.sqrt_one_minus_abar_prev = jnp.append(schedule.sqrt_one_minus_alphas_cumprod, 0.0)[prev_index]
        self.step_beta = _step_betas(schedule, timesteps, prev)

    def base(self) -> dict[str, jax.Array]:
        zeros = jnp.zeros_like(self.sqrt_abar)
        # Blended sampling's kept sample at each step's target level; the last step ends on it exactly.
        last = jnp.arange(zeros.shape[0]) == zeros.shape[0] - 1
        return dict(sqrt_abar=self.sqrt_abar, sqrt_one_minus_abar=self.sqrt_one_minus_abar,
                    a=zeros, b=zeros, c=zeros, d=zeros, e=zeros,
                    kept_signal=jnp.where(last, 1.0, self.sqrt_abar_prev),
                    kept_noise=jnp.where(last, 0.0, self.sqrt_one_minus_abar_prev))


def _step_betas(schedule: NoiseSchedule, timesteps: np.ndarray, prev: np.ndarray) -> jax.Array:
    """1 - abar_t / abar_prev per step, as 1 - prod(1 - beta_k) over k in (prev, t]: no cancellation."""
    segment = np.full(schedule.num_timesteps, len(timesteps))
    for index, (t, p) in enumerate(zip(timesteps, prev)):
        segment[p + 1:t + 1] = index
    log_alphas = jax.ops.segment_sum(jnp.log1p(-schedule.betas), segment, num_segments=len(timesteps) + 1)
    return -jnp.expm1(log_alphas[:-1])


def _ddim_tables(schedule: NoiseSchedule, timesteps: np.ndarray, eta: float) -> dict[str, jax.Array]:
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise (DDIM eq. 12).

    sigma^2 = eta^2 (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev); the last step goes to
    abar_0, not to 1, as in LDM's make_ddim_sampling_parameters.
    """
    levels = _Levels(schedule, timesteps, final_prev=0)
    noise_share = eta**2 * levels.step_beta / jnp.square(levels.sqrt_one_minus_abar)  # sigma^2 / (1 - abar_prev)
    tables = levels.base()
    tables.update(b=levels.sqrt_abar_prev, c=levels.sqrt_one_minus_abar_prev * jnp.sqrt(1.0 - noise_share),
                  d=levels.sqrt_one_minus_abar_prev * jnp.sqrt(noise_share))
    return tables


def _ddpm_tables(schedule: NoiseSchedule, timesteps: np.ndarray, eta: float) -> dict[str, jax.Array]:
    """Ancestral sampling from the posterior q(x_prev | x_t, x0) with the step's beta.

    mean = sqrt(abar_prev) beta / (1 - abar_t) x0 + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) x_t,
    variance = beta (1 - abar_prev) / (1 - abar_t) ("fixed_small"), zero at the last step. With
    every timestep this is LDM's p_sample (clip_denoised=False); with fewer, the respaced process
    of improved DDPM / diffusers, whose betas are recomputed from abar at the kept timesteps.
    """
    levels = _Levels(schedule, timesteps, final_prev=-1)
    one_minus_abar = jnp.square(levels.sqrt_one_minus_abar)
    one_minus_prev = jnp.square(levels.sqrt_one_minus_abar_prev)
    tables = levels.base()
    tables.update(b=levels.sqrt_abar_prev * levels.step_beta / one_minus_abar,
                  a=jnp.sqrt(1.0 - levels.step_beta) * one_minus_prev / one_minus_abar,
                  d=jnp.sqrt(levels.step_beta * one_minus_prev / one_minus_abar))
    return tables


def _dpmpp_2m_tables(schedule: NoiseSchedule, timesteps: np.ndarray, eta: float) -> dict[str, jax.Array]:
    """DPM-Solver++ (2M, midpoint) in data prediction, as diffusers' DPMSolverMultistepScheduler.

    With lambda = log(alpha / sigma), h = lambda_next - lambda_t and r = h_previous / h:
    x_next = sigma_next / sigma_t x - alpha_next (exp(-h) - 1) D, where D = x0 on the first step
    and the last (lower_order_final; it ends at sigma = 0, so it returns x0), else
    D = x0 + (x0 - x0_previous) / (2 r).
    """
    levels = _Levels(schedule, timesteps, final_prev=-1)
    signal_to_noise = levels.sqrt_abar / levels.sqrt_one_minus_abar  # exp(lambda)
    noise_to_signal_next = levels.sqrt_one_minus_abar_prev / levels.sqrt_abar_prev  # exp(-lambda_next)
    exp_minus_h = noise_to_signal_next * signal_to_noise
    gain = levels.sqrt_abar_prev * (1.0 - exp_minus_h)
    log_snr = jnp.log(signal_to_noise)
    h = log_snr[1:] - log_snr[:-1]  # h of steps 0 .. n-2 (the last step's h is infinite).
    weight = h[1:] / (2.0 * h[:-1])  # 1 / (2 r) of steps 1 .. n-2
    weight = jnp.concatenate([jnp.zeros(1), weight, jnp.zeros(1)])[:len(timesteps)]
    tables = levels.base()
    tables.update(a=levels.sqrt_one_minus_abar_prev / levels.sqrt_one_minus_abar,
                  b=gain * (1.0 + weight), e=-gain * weight)
    return tables


_TABLES = {"ddim": _ddim_tables, "ddpm": _ddpm_tables, "dpmpp_2m": _dpmpp_2m_tables}
