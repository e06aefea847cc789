"""Our whole sampling loop (guided eps + DDIM scan) beside LDM's own DDIMSampler.

Both run on the same weights (an LDM UNet with random weights from ldm_fixtures, converted by our
importer), the same starting noise, person mask and cross-attention contexts. LDM's side is
`ldm.models.diffusion.ddim.DDIMSampler` from the `stable-diffusion-sdkit` package, driving a
stand-in for UPGPT's LatentDiffusion: the schedule buffers LatentDiffusion.register_schedule
makes (float64 tables stored as float32) and `apply_model` with UPGPT's "hybrid" conditioning
(the mask concatenated to the latents, the context cross-attended).

Guidance: the original runs single-scale classifier-free guidance,
eps = e(uc) + s (e(c) - e(uc)). Our chained guidance reduces to exactly that when the three
scales are equal (branch weights 1 - s on "all conditions null" and s on "all present"), with
uc = the fusion's context with every condition replaced by its null embedding; the contexts are
computed once by our fusion and given to both samplers, so what is compared is the guidance
combination and the DDIM loop (eta 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.modules.diffusionmodules.util import make_beta_schedule

from conftest import random_params
from ldm_fixtures import TOLERANCE, LatentDiffusionWeights, run_ldm_unet, tiny_model_config
from references import nchw, nhwc, relative_error
from upgpt_jax.convert import ldm as convert_ldm
from upgpt_jax.diffusion import GUIDANCE_ORDER, NoiseSchedule, guided_eps_fn, sample
from upgpt_jax.models.fusion import MultimodalFusion
from upgpt_jax.models.upgpt import build_model

BATCH, LATENT, TEXT_TOKENS = 2, (8, 12), 6
NUM_STEPS, GUIDANCE_SCALE = 5, 2.5
SCHEDULE = dict(schedule="sqrt_linear", beta_start=0.00085, beta_end=0.012, num_timesteps=1000)


class LatentDiffusionStandIn(torch.nn.Module):
    """What DDIMSampler reads of UPGPT's LatentDiffusion (eps parameterisation)."""

    parameterization = "eps"
    device = "cpu"

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet
        self.num_timesteps = SCHEDULE["num_timesteps"]
        # LDM's "linear" is linear in sqrt(beta): our "sqrt_linear".
        betas = make_beta_schedule(
            "linear", self.num_timesteps, SCHEDULE["beta_start"], SCHEDULE["beta_end"]
        )
        alphas_cumprod = np.cumprod(1.0 - betas)
        for name, table in (
            ("betas", betas),
            ("alphas_cumprod", alphas_cumprod),
            ("alphas_cumprod_prev", np.append(1.0, alphas_cumprod[:-1])),
        ):
            self.register_buffer(name, torch.tensor(table, dtype=torch.float32))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """DiffusionWrapper's "hybrid" conditioning."""
        sample = torch.cat([x, *cond["c_concat"]], dim=1)
        return run_ldm_unet(self.unet, sample, t, torch.cat(cond["c_crossattn"], dim=1))


def test_guided_ddim_matches_ldm_ddim_sampler_with_classifier_free_guidance():
    model_config = tiny_model_config()
    model_config.standardize_conditions = False
    model = build_model(model_config)
    weights = LatentDiffusionWeights(model_config, seed=31)
    converted = convert_ldm.convert_ldm_state_dict(
        weights.checkpoint(), model_config, source="test", parts=["unet", "fusion"]
    ).params
    fusion_config = model_config.fusion
    draw = np.random.default_rng(32)
    conditions = {
        "text": draw.standard_normal((BATCH, TEXT_TOKENS, fusion_config.text_dim)),
        "style": draw.standard_normal((BATCH, fusion_config.num_parts, fusion_config.style_dim)),
        "pose": draw.standard_normal((BATCH, fusion_config.pose_dim)),
    }
    conditions = {name: jnp.asarray(value, jnp.float32) for name, value in conditions.items()}
    fusion_module = MultimodalFusion(**model.fusion_config)
    fusion_shapes = jax.eval_shape(fusion_module.init, jax.random.key(0), *conditions.values())
    fusion = random_params(nn.unbox(fusion_shapes)["params"], seed=33, scale=1.0)  # Nulls too.
    params = {"unet": converted["unet"], "fusion": {**fusion, **converted["fusion"]}}
    mask = jnp.asarray(draw.uniform(size=(BATCH, *LATENT, 1)) > 0.5, jnp.float32)
    x_T = jnp.asarray(draw.standard_normal((BATCH, *LATENT, 4)), jnp.float32)

    scales = {name: GUIDANCE_SCALE for name in GUIDANCE_ORDER}
    eps_fn = guided_eps_fn(model, params, mask, conditions, scales)
    schedule = NoiseSchedule.create(**SCHEDULE)
    ours = jax.jit(
        lambda x: sample(eps_fn, schedule, x, None, method="ddim", num_steps=NUM_STEPS, eta=0.0)
    )(x_T)

    def context(dropped: bool) -> torch.Tensor:
        drops = {f"drop_{name}": jnp.full((BATCH,), dropped) for name in GUIDANCE_ORDER}
        values = model.apply({"params": params}, **conditions, **drops, method="context")
        return torch.from_numpy(np.array(values))

    torch_mask = nchw(np.array(mask))
    sampler = DDIMSampler(LatentDiffusionStandIn(weights.model.diffusion_model))

    def ldm_sample(**guidance) -> torch.Tensor:
        samples, _ = sampler.sample(
            NUM_STEPS,
            BATCH,
            (4, *LATENT),
            conditioning={"c_concat": [torch_mask], "c_crossattn": [context(False)]},
            eta=0.0,
            x_T=nchw(np.array(x_T)),
            verbose=False,
            **guidance,
        )
        return samples

    expected = ldm_sample(
        unconditional_guidance_scale=GUIDANCE_SCALE,
        unconditional_conditioning={"c_concat": [torch_mask], "c_crossattn": [context(True)]},
    )
    assert relative_error(ours, nhwc(expected)) <= TOLERANCE
    # The guidance matters here: unguided sampling ends elsewhere.
    assert relative_error(ldm_sample(), expected) > 100 * TOLERANCE
