"""LDM's side of the checkpoint-import tests: UPGPT's LatentDiffusion module layout built from
LDM's own PyTorch modules (the `stable-diffusion-sdkit` package: Stability's fork of the LDM code,
same module names as UPGPT's copy) with random weights, and the checks that converted params
reproduce their outputs. Shared by test_convert_ldm and test_convert_cli.

The model config is configs/synthetic_tiny.py with CONFIG_OVERRIDES.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import pathlib

import jax
import ml_collections
import numpy as np
import torch
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.ema import LitEma

from references import nhwc, randomize_weights, relative_error
from upgpt_jax.models.unet import UNet
from upgpt_jax.models.vae import AutoencoderKL

TOLERANCE = 1e-4


CONFIG_FILE = pathlib.Path(__file__).parent.parent / "configs" / "synthetic_tiny.py"
# Changes to configs/synthetic_tiny.py (levels with and without attention and resampling): LDM's
# GroupNorms have 32 groups (so the VAE needs 32 channels); two transformer blocks per attention.
CONFIG_OVERRIDES = {"unet.norm_groups": 32, "vae.norm_groups": 32, "vae.channels": 32, "unet.transformer_depth": 2}


def tiny_model_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("synthetic_tiny", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.get_config().model
    for field, value in CONFIG_OVERRIDES.items():
        section, name = field.split(".")
        model[section][name] = value
    return model


def ldm_unet(unet) -> UNetModel:
    """LDM's UNet as UPGPT's lowres.yaml configures it, for `config.model.unet`."""
    return UNetModel(
        image_size=8,
        in_channels=unet.in_channels,
        out_channels=unet.out_channels,
        model_channels=unet.channels,
        attention_resolutions=[2**level for level in unet.attention_levels],
        num_res_blocks=unet.num_res_blocks,
        channel_mult=list(unet.channel_mult),
        num_heads=unet.num_heads,
        use_spatial_transformer=True,
        transformer_depth=unet.transformer_depth,
        # This fork wants one context width per transformer block.
        context_dim=[unet.context_dim] * unet.transformer_depth,
        legacy=False,
    )


class DiffusionWrapper(torch.nn.Module):
    """LatentDiffusion.model: holds the UNet as `diffusion_model`."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.diffusion_model = unet


class FirstStage(torch.nn.Module):
    """The parameter layout of ldm.models.autoencoder.AutoencoderKL (which needs Lightning)."""

    def __init__(self, vae):
        super().__init__()
        ddconfig = dict(
            double_z=True,
            z_channels=vae.z_channels,
            resolution=64,
            in_channels=vae.in_channels,
            out_ch=vae.out_channels,
            ch=vae.channels,
            ch_mult=list(vae.channel_mult),
            num_res_blocks=vae.num_res_blocks,
            attn_resolutions=[],
            dropout=0.0,
        )
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = torch.nn.Module()  # LPIPSWithDiscriminator in first-stage training checkpoints.
        self.loss.logvar = torch.nn.Parameter(torch.zeros(()))
        self.quant_conv = torch.nn.Conv2d(2 * vae.z_channels, 2 * vae.z_channels, 1)
        self.post_quant_conv = torch.nn.Conv2d(vae.z_channels, vae.z_channels, 1)

    def moments(self, image: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(image))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latents))


class LinearProject(torch.nn.Module):
    """UPGPT's ldm.modules.poses.poses.LinearProject."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.model = torch.nn.Linear(input_dim, output_dim)


class LatentDiffusionWeights(torch.nn.Module):
    """The modules of UPGPT's LatentDiffusion whose state_dict() is the checkpoint's layout.

    The CLIP encoders are small stand-ins with the released key prefixes (they are not converted).
    """

    def __init__(self, model_config, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = DiffusionWrapper(ldm_unet(model_config.unet))
        self.first_stage_model = FirstStage(model_config.vae)
        self.cond_stage_model = torch.nn.Module()
        self.cond_stage_model.transformer = torch.nn.Embedding(7, 4)
        style = torch.nn.Module()
        style.model = torch.nn.Module()
        style.model.visual = torch.nn.Linear(3, 2)
        self.extra_cond_models = torch.nn.ModuleList(
            [style, LinearProject(model_config.fusion.pose_dim, model_config.fusion.context_dim)]
        )
        randomize_weights(self, seed)
        self.model_ema = LitEma(self.model)  # Registered after randomizing: a copy of the weights.
        self.register_buffer("betas", torch.linspace(1e-4, 2e-2, 10))
        self.register_buffer("scale_factor", torch.tensor(0.18215))

    def checkpoint(self) -> dict[str, np.ndarray]:
        return {key: value.numpy() for key, value in self.state_dict().items()}

    def perturb_ema(self, seed: int) -> torch.nn.Module:
        """Gives the EMA buffers weights of their own; returns a UNet holding them."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for buffer in self.model_ema.buffers():
                if buffer.is_floating_point() and buffer.ndim:
                    buffer.add_(0.1 * torch.randn(buffer.shape, generator=generator))
        ema_model = copy.deepcopy(self.model)
        self.model_ema.copy_to(ema_model)
        return ema_model.diffusion_model


def unet_inputs(model_config, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    unet = model_config.unet
    sample = torch.randn(2, unet.in_channels, 8, 12, generator=generator)
    context = torch.randn(2, 5, unet.context_dim, generator=generator)
    return sample, torch.tensor([3, 741]), context


@functools.partial(jax.jit, static_argnums=(0, 1))
def apply(module, method, params, *args):
    """Jitted `module.apply`: one compilation per module config, shared by the tests."""
    return module.apply({"params": params}, *args, method=method)


def run_ldm_unet(unet: torch.nn.Module, sample, timesteps, context) -> torch.Tensor:
    """This fork's SpatialTransformer takes one context per transformer block."""
    depth = len(unet.middle_block[1].transformer_blocks)
    with torch.no_grad():
        return unet(sample, timesteps, context=[context] * depth)


def assert_unet_matches(params, model_config, torch_unet: torch.nn.Module) -> None:
    sample, timesteps, context = unet_inputs(model_config)
    expected = run_ldm_unet(torch_unet, sample, timesteps, context)
    ours = apply(
        UNet(**model_config.unet),
        None,
        params,
        nhwc(sample),
        timesteps.numpy(),
        context.numpy(),
    )
    assert relative_error(ours, nhwc(expected)) <= TOLERANCE


def assert_vae_matches(params, model_config, first_stage: FirstStage) -> None:
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(1, model_config.vae.in_channels, 16, 24, generator=generator)
    latents = torch.randn(1, model_config.vae.z_channels, 4, 6, generator=generator)
    with torch.no_grad():
        mean, logvar = first_stage.moments(image).chunk(2, dim=1)
        decoded = first_stage.decode(latents)
    vae = AutoencoderKL(**model_config.vae)
    posterior = apply(vae, AutoencoderKL.encode, params, nhwc(image))
    assert relative_error(posterior.mean, nhwc(mean)) <= TOLERANCE
    assert relative_error(posterior.logvar, nhwc(logvar.clamp(-30, 20))) <= TOLERANCE
    ours = apply(vae, AutoencoderKL.decode, params, nhwc(latents))
    assert relative_error(ours, nhwc(decoded)) <= TOLERANCE


def assert_diffusers_match(params, model_config, torch_unet, torch_vae) -> None:
    """Our UNet and VAE on `params` against diffusers' UNet2DConditionModel and AutoencoderKL
    (the inputs of the LDM checks above, so the jitted modules are shared)."""
    sample, timesteps, context = unet_inputs(model_config)
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(1, model_config.vae.in_channels, 16, 24, generator=generator)
    latents = torch.randn(1, model_config.vae.z_channels, 4, 6, generator=generator)
    with torch.no_grad():
        expected_noise = torch_unet(sample, timesteps, encoder_hidden_states=context).sample
        expected_mean = torch_vae.encode(image).latent_dist.mean
        expected_image = torch_vae.decode(latents).sample
    unet = UNet(**model_config.unet)
    noise = apply(unet, None, params["unet"], nhwc(sample), timesteps.numpy(), context.numpy())
    assert relative_error(noise, nhwc(expected_noise)) <= TOLERANCE
    vae = AutoencoderKL(**model_config.vae)
    posterior = apply(vae, AutoencoderKL.encode, params["vae"], nhwc(image))
    assert relative_error(posterior.mean, nhwc(expected_mean)) <= TOLERANCE
    decoded = apply(vae, AutoencoderKL.decode, params["vae"], nhwc(latents))
    assert relative_error(decoded, nhwc(expected_image)) <= TOLERANCE


def assert_pose_matches(params, model_config, pose: LinearProject) -> None:
    smpl = torch.randn(3, model_config.fusion.pose_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = pose.model(smpl).numpy()
    ours = smpl.numpy() @ params["pose_proj"]["kernel"] + params["pose_proj"]["bias"]
    assert relative_error(ours, expected) <= TOLERANCE
