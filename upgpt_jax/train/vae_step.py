"""The VAE stage: LDM's KL-autoencoder loss without the discriminator, and its jitted train step.

What LDM computes (ldm/modules/losses/contperceptual.py `LPIPSWithDiscriminator`, generator pass;
ldm/models/autoencoder.py `AutoencoderKL`), for a batch of B images x in [-1, 1] with C*H*W = N
elements each, reconstructed from a posterior SAMPLE z ~ q(z|x):
    rec   = |x - x_rec| + perceptual_weight * LPIPS(x, x_rec)    (per pixel; LPIPS, one number per
                                                                   example, is added to every pixel)
    nll   = rec / exp(logvar) + logvar                            (logvar: a scalar, init 0, and not
                                                                   in the autoencoder's optimizer, so
                                                                   it stays 0 and nll = rec)
    loss  = sum(nll) / B + kl_weight * sum(KL) / B               (KL(q || N(0, I)) summed over the
                                                                   latent elements of each example)
          + d_weight * disc_factor * g_loss                       (the GAN term: not implemented)
So LDM SUMS the pixel terms over each example's N elements; kl_weight (1e-6 for kl-f8) is
relative to that sum. Here the same loss is divided by N, which changes neither its minimiser nor
Adam's steps (scale-invariant up to eps), and keeps the numbers readable:
    loss = mean|x - x_rec| + lpips_weight * mean_b LPIPS + kl_weight * mean_b KL / N
with kl_weight and lpips_weight in LDM's units (config.train.vae). One difference remains: a
global-norm gradient clip (config.optim.grad_clip_norm) acts on this N-times smaller gradient;
LDM's autoencoder runs Adam(betas=(0.5, 0.9)) without clipping.

An option LDM lacks, `person_weight` w > 0: the L1 term becomes mean(p * |x - x_rec|) with the
pixel weights p of upgpt_jax/train/loss_weights.py (1 + w on the person and its rim, mean 1). On
synthetic_tiny (600 steps, 32 test targets) the reconstructions name the right garment colour for
35% of parts at w = 0 and 74% at w = 12; the rim keeps the silhouette IoU (0.81 at w = 0, 0.815 at
w = 12 with the rim, 0.71 without it). Tried and dropped (issue 17): an extra L1 on each pixel's
chroma (the channels minus their mean, person-weighted), meant for the desaturation a short run
shows (purple, pink and green garments grey; red and blue shoes brown and black): colour 0.58 at
chroma weight 1 and 0.50 at 3 against 0.58 without; lr 4e-3: 0.48; batch 16 for 400 steps: 0.57.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from upgpt_jax.eval.lpips import LPIPS, load_lpips_from_folder, lpips_distance
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.models.vae import DiagonalGaussian
from upgpt_jax.sharding import batch_sharding, on_mesh
from upgpt_jax.train.loss_weights import person_pixel_weights
from upgpt_jax.train.optimizer import current_learning_rate
from upgpt_jax.train.state import MAX_UPDATE_RATIO, TrainState, apply_gradients, replicated

VaeTrainStep = Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def _sampled_reconstruction(module: UPGPT, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, DiagonalGaussian]:
    return module.vae(images, rng, sample_posterior=True)


def vae_loss(model: UPGPT, vae_params: Any, images: jax.Array, rng: jax.Array, *, kl_weight: float,
             lpips_weight: float = 0.0, lpips_params: Any = None,
             lpips_net: str = "vgg", pixel_weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of the module doc for images (B, H, W, 3) in [-1, 1].

    `pixel_weights` (B, H, W, 1), mean 1 (`person_pixel_weights`), weight the L1 term; the logged
    rec_l1 stays the plain mean, comparable between runs.

    The reconstruction decodes z = mean + std * eps with eps = normal(rng, mean.shape) (as LDM,
    which trains on posterior samples). The LPIPS term (lpips_net on [-1, 1] inputs, as LDM) is
    added when `lpips_params` are given and `lpips_weight` is non-zero. Metrics: loss, rec_l1
    (mean |x - x_rec|), kl (KL summed per example, batch mean: LDM's kl_loss), and lpips (batch
    mean) when used.
    """
    reconstruction, posterior = model.apply({"params": {"vae": vae_params}}, images, rng,
                                            method=_sampled_reconstruction)
    images, reconstruction = images.astype(jnp.float32), reconstruction.astype(jnp.float32)
    elements_per_example = math.prod(images.shape[1:])
    absolute_error = jnp.abs(images - reconstruction)
    rec_l1 = jnp.mean(absolute_error)
    weighted_l1 = rec_l1 if pixel_weights is None else jnp.mean(pixel_weights * absolute_error)
    kl = jnp.mean(posterior.kl())
    loss = weighted_l1 + kl_weight * kl / elements_per_example
    metrics = {"rec_l1": rec_l1, "kl": kl}
    if lpips_params is not None and lpips_weight:
        perceptual = jnp.mean(lpips_distance(lpips_params, images, reconstruction, net=lpips_net))
        loss = loss + lpips_weight * perceptual
        metrics["lpips"] = perceptual
    metrics["loss"] = loss
    return loss, metrics


def lpips_for_config(vae_settings: ml_collections.ConfigDict) -> tuple[LPIPS, Any] | None:
    """The LPIPS that config.train.vae asks for: (module, params) read from `lpips_path` (the
    folder layout of `load_lpips_from_folder`) with `lpips_net`, or None when `lpips_path` is
    empty or `lpips_weight` is 0 (the loss then has no perceptual term)."""
    if not vae_settings.lpips_path or not float(vae_settings.lpips_weight):
        return None
    return load_lpips_from_folder(vae_settings.lpips_path, vae_settings.lpips_net)


def make_vae_train_step(model: UPGPT, config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                        state_shardings: TrainState, mesh: Mesh,
                        lpips: tuple[LPIPS, Any] | None = None) -> VaeTrainStep:
    """`step(state, batch) -> (state, metrics)` for the VAE stage (state.params == {"vae": ...}).

    `batch["image"]` (B, H, W, 3) in [-1, 1] is used, and `batch["person_mask"]` when
    config.train.vae.person_weight > 0 (other keys are ignored). `lpips` is what
    `lpips_for_config` / `upgpt_jax.eval.lpips.load_lpips` return; without it the LPIPS term is left out
    whatever config.train.vae.lpips_weight says. The LPIPS params are placed on `mesh` once,
    replicated, and passed to the jitted step as an argument (not baked into it as constants).
    Jitted with explicit shardings; the input state is donated (do not touch it after the call).
    As the diffusion step: AdamW, EMA, and the NaN guard of `state.apply_gradients`.
    """
    settings = config.train.vae
    kl_weight = float(settings.kl_weight)
    lpips_weight = float(settings.lpips_weight) if lpips is not None else 0.0
    lpips_net, lpips_params = (lpips[0].net, jax.device_put(lpips[1], replicated(mesh))) if lpips else ("vgg", None)
    ema_decay = float(config.train.ema_decay)
    max_update_ratio = float(config.train.get("max_update_ratio", MAX_UPDATE_RATIO))
    grad_accum_steps = int(config.train.grad_accum_steps)
    person_weight = float(settings.get("person_weight", 0.0))  # absent in configs saved before it existed

    def step(state: TrainState, images: jax.Array, person_mask: jax.Array | None,
             lpips_params: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, sample_rng = jax.random.split(state.rng)
        pixel_weights = (None if person_mask is None
                         else person_pixel_weights(person_mask, images.shape[1:3], person_weight))

        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            return vae_loss(model, params["vae"], images, sample_rng, kl_weight=kl_weight,
                            lpips_weight=lpips_weight, lpips_params=lpips_params, lpips_net=lpips_net,
                            pixel_weights=pixel_weights)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state, finite, grad_norm = apply_gradients(state, grads, loss, rng, optimizer, ema_decay,
                                                         max_update_ratio)
        metrics.update(
            grad_norm=grad_norm,
            lr=current_learning_rate(config.optim, state.opt_state, grad_accum_steps),
            skipped=new_state.skipped,
            finite=finite,
        )
        return new_state, metrics

    jitted = jax.jit(
        on_mesh(step, mesh, config.axis_rules),
        in_shardings=(state_shardings, batch_sharding(mesh, config.axis_rules),
                      batch_sharding(mesh, config.axis_rules) if person_weight else None, replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    return _BatchStep(jitted, person_weight > 0, lpips_params)


class _BatchStep:
    """`step(state, batch)` over the jitted step's own arguments; `lower(state, batch)` as a jitted
    function has, for `distributed.compile_then_meet` (multi-process runs compile before the first
    step)."""

    def __init__(self, jitted: Any, reads_person_mask: bool, lpips_params: Any):
        self._jitted, self._reads_person_mask, self._lpips_params = jitted, reads_person_mask, lpips_params

    def _arguments(self, state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[Any, ...]:
        person_mask = batch["person_mask"] if self._reads_person_mask else None
        return state, batch["image"], person_mask, self._lpips_params

    def __call__(self, state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        return self._jitted(*self._arguments(state, batch))

    def lower(self, state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        return self._jitted.lower(*self._arguments(state, batch))
