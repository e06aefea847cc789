"""Diffusion processes: noise schedules and the training loss (samplers come with the sampling issue)."""
from upgpt_jax.diffusion.loss import eps_loss
from upgpt_jax.diffusion.schedule import NoiseSchedule, make_betas

__all__ = ["NoiseSchedule", "eps_loss", "make_betas"]
