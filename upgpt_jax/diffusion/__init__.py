"""Diffusion processes: noise schedules, the training loss, samplers and classifier-free guidance."""
from upgpt_jax.diffusion.guidance import GUIDANCE_ORDER, guidance_branches, guided_eps_fn
from upgpt_jax.diffusion.loss import eps_loss
from upgpt_jax.diffusion.samplers import SAMPLERS, EpsFn, sample, sampling_timesteps
from upgpt_jax.diffusion.schedule import NoiseSchedule, make_betas

__all__ = ["GUIDANCE_ORDER", "SAMPLERS", "EpsFn", "NoiseSchedule", "eps_loss", "guidance_branches",
           "guided_eps_fn", "make_betas", "sample", "sampling_timesteps"]
