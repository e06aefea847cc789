"""The LDM/UPGPT checkpoint import, against LDM's own PyTorch modules.

The reference state dicts come from LDM's `openaimodel.UNetModel`, `model.Encoder`/`Decoder` and
`ema.LitEma` as shipped by the `stable-diffusion-sdkit` package (Stability's fork of the LDM code,
same module names as UPGPT's copy), with random weights. The renamed dict must load strictly into
diffusers' modules, and the converted params into our Flax modules, with the same outputs.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from diffusers import UNet2DConditionModel
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.ema import LitEma

from upgpt_jax.config_base import released_config
from upgpt_jax.convert import ldm as convert_ldm
from upgpt_jax.convert.params_io import abstract_params, count_params
from upgpt_jax.convert.torch_params import WeightConversionError, match_torch_keys
from upgpt_jax.models.unet import UNet
from upgpt_jax.models.vae import AutoencoderKL

TOLERANCE = 1e-4


CONFIG_FILE = pathlib.Path(__file__).parent.parent / "configs" / "synthetic_tiny.py"
# Changes to configs/synthetic_tiny.py (levels with and without attention and resampling): LDM's
# GroupNorms have 32 groups; two transformer blocks per attention.
CONFIG_OVERRIDES = {"unet.norm_groups": 32, "vae.norm_groups": 32, "unet.transformer_depth": 2}


def tiny_model_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("synthetic_tiny", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.get_config().model
    for field, value in CONFIG_OVERRIDES.items():
        section, name = field.split(".")
        model[section][name] = value
    return model


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (LDM zero-initialises output convs): matrices ~ 1/sqrt(fan_in),
    norm scales around 1, biases small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / np.sqrt(param[0].numel()))
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return module.eval()


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
        randomize_(self, seed)
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


def run_ldm_unet(unet: torch.nn.Module, sample, timesteps, context) -> np.ndarray:
    """This fork's SpatialTransformer takes one context per transformer block."""
    depth = len(unet.middle_block[1].transformer_blocks)
    with torch.no_grad():
        return unet(sample, timesteps, context=[context] * depth).numpy()


def assert_unet_matches(params, model_config, torch_unet: torch.nn.Module) -> None:
    sample, timesteps, context = unet_inputs(model_config)
    expected = run_ldm_unet(torch_unet, sample, timesteps, context)
    ours = apply(
        UNet(**model_config.unet),
        None,
        params,
        sample.permute(0, 2, 3, 1).numpy(),
        timesteps.numpy(),
        context.numpy(),
    )
    assert relative_error(np.transpose(ours, (0, 3, 1, 2)), expected) <= TOLERANCE


def assert_vae_matches(params, model_config, first_stage: FirstStage) -> None:
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(1, model_config.vae.in_channels, 16, 24, generator=generator)
    latents = torch.randn(1, model_config.vae.z_channels, 4, 6, generator=generator)
    with torch.no_grad():
        mean, logvar = first_stage.moments(image).chunk(2, dim=1)
        decoded = first_stage.decode(latents).numpy()
    vae = AutoencoderKL(**model_config.vae)
    posterior = apply(vae, AutoencoderKL.encode, params, image.permute(0, 2, 3, 1).numpy())
    assert relative_error(np.transpose(posterior.mean, (0, 3, 1, 2)), mean.numpy()) <= TOLERANCE
    assert (
        relative_error(np.transpose(posterior.logvar, (0, 3, 1, 2)), logvar.clamp(-30, 20).numpy())
        <= TOLERANCE
    )
    ours = apply(vae, AutoencoderKL.decode, params, latents.permute(0, 2, 3, 1).numpy())
    assert relative_error(np.transpose(ours, (0, 3, 1, 2)), decoded) <= TOLERANCE


def assert_pose_matches(params, model_config, pose: LinearProject) -> None:
    smpl = torch.randn(3, model_config.fusion.pose_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = pose.model(smpl).numpy()
    ours = smpl.numpy() @ params["pose_proj"]["kernel"] + params["pose_proj"]["bias"]
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.fixture(scope="module")
def model_config():
    return tiny_model_config()


@pytest.fixture(scope="module")
def weights(model_config):
    return LatentDiffusionWeights(model_config)


def test_renamed_unet_loads_into_diffusers_with_same_outputs(model_config, weights):
    unet = model_config.unet
    key_map = convert_ldm.key_maps(model_config)["unet"]
    renamed = convert_ldm.rename_part(weights.checkpoint(), key_map)
    assert renamed.unexpected == []
    down = tuple(
        "CrossAttnDownBlock2D" if level in unet.attention_levels else "DownBlock2D"
        for level in range(len(unet.channel_mult))
    )
    reference = UNet2DConditionModel(
        sample_size=8,
        in_channels=unet.in_channels,
        out_channels=unet.out_channels,
        down_block_types=down,
        up_block_types=tuple(name.replace("Down", "Up") for name in reversed(down)),
        block_out_channels=tuple(unet.channels * m for m in unet.channel_mult),
        layers_per_block=unet.num_res_blocks,
        transformer_layers_per_block=unet.transformer_depth,
        cross_attention_dim=unet.context_dim,
        attention_head_dim=unet.num_heads,
        norm_num_groups=unet.norm_groups,
    ).eval()
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in renamed.state_dict.items()}, strict=True
    )
    for diffusers_key, ldm_key in renamed.origin.items():
        assert key_map.to_ldm(diffusers_key) == ldm_key
    sample, timesteps, context = unet_inputs(model_config)
    with torch.no_grad():
        ours = reference(sample, timesteps, encoder_hidden_states=context).sample.numpy()
    expected = run_ldm_unet(weights.model.diffusion_model, sample, timesteps, context)
    assert relative_error(ours, expected) <= TOLERANCE


def test_renamed_vae_loads_into_diffusers_with_same_outputs(model_config, weights):
    vae = model_config.vae
    renamed = convert_ldm.rename_part(
        weights.checkpoint(), convert_ldm.key_maps(model_config)["vae"]
    )
    assert renamed.unexpected == []
    levels = len(vae.channel_mult)
    reference = TorchAutoencoderKL(
        in_channels=vae.in_channels,
        out_channels=vae.out_channels,
        latent_channels=vae.z_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(vae.channels * m for m in vae.channel_mult),
        layers_per_block=vae.num_res_blocks,
        norm_num_groups=vae.norm_groups,
    ).eval()
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in renamed.state_dict.items()}, strict=True
    )
    image = torch.randn(1, 3, 16, 24, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = reference.encode(image).latent_dist.parameters.numpy()
        expected = weights.first_stage_model.moments(image).numpy()
    assert relative_error(ours, expected) <= TOLERANCE


def test_converted_checkpoint_matches_ldm_modules(model_config, weights):
    conversion = convert_ldm.convert_ldm_state_dict(
        weights.checkpoint(), model_config, source="test"
    )
    assert_unet_matches(conversion.params["unet"], model_config, weights.model.diffusion_model)
    assert_vae_matches(conversion.params["vae"], model_config, weights.first_stage_model)
    assert_pose_matches(conversion.params["fusion"], model_config, weights.extra_cond_models[1])
    ignored = set(conversion.ignored)
    assert {
        "cond_stage_model.transformer.weight",
        "extra_cond_models.0.model.visual.weight",
        "betas",
        "model_ema.decay",
        "first_stage_model.loss.logvar",
    } <= ignored
    assert not any(
        key.startswith(("model.diffusion_model.", "first_stage_model.encoder")) for key in ignored
    )
    assert conversion.scale_factor == pytest.approx(0.18215)


def test_ema_weights_are_taken_from_model_ema(model_config):
    weights = LatentDiffusionWeights(model_config, seed=5)
    ema_unet = weights.perturb_ema(seed=6)
    checkpoint = weights.checkpoint()
    conversion = convert_ldm.convert_ldm_state_dict(
        checkpoint, model_config, source="test", parts=["unet"], use_ema=True
    )
    assert_unet_matches(conversion.params["unet"], model_config, ema_unet)
    assert "model.diffusion_model.out.2.weight" in conversion.ignored
    # Without the non-EMA copy the dotted names come from the model's own structure.
    ema_only = {k: v for k, v in checkpoint.items() if not k.startswith("model.diffusion_model.")}
    conversion = convert_ldm.convert_ldm_state_dict(
        ema_only, model_config, source="test", parts=["unet"], use_ema=True
    )
    assert_unet_matches(conversion.params["unet"], model_config, ema_unet)


def test_one_error_lists_missing_unexpected_and_misshaped_keys(model_config, weights):
    checkpoint = weights.checkpoint()
    del checkpoint["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"]
    checkpoint["first_stage_model.decoder.up.0.block.9.conv1.weight"] = np.zeros(
        (3, 3, 3, 3), np.float32
    )
    checkpoint["extra_cond_models.1.model.bias"] = np.zeros(7, np.float32)
    with pytest.raises(WeightConversionError) as raised:
        convert_ldm.convert_ldm_state_dict(checkpoint, model_config, source="upgpt.ckpt")
    error = raised.value
    assert len(error.missing) == len(error.unexpected) == len(error.misshaped) == 1
    message = str(error)
    assert "upgpt.ckpt" in message
    assert (
        "unet/down_blocks_0/resnets_0/conv1/kernel (3, 3, 32, 32), "
        "checkpoint key model.diffusion_model.input_blocks.1.0.in_layers.2.weight" in message
    )
    assert "first_stage_model.decoder.up.0.block.9.conv1.weight (3, 3, 3, 3)" in message
    assert (
        "extra_cond_models.1.model.bias -> fusion/pose_proj/bias: got (7,), expected (64,)"
        in message
    )


def test_missing_ema_buffer_is_named_as_in_the_checkpoint(model_config, weights):
    checkpoint = weights.checkpoint()
    del checkpoint["model_ema.diffusion_modelout2bias"]
    with pytest.raises(
        WeightConversionError,
        match=r"unet/conv_out/bias \(4,\), checkpoint key "
        r"model_ema.diffusion_modelout2bias",
    ):
        convert_ldm.convert_ldm_state_dict(
            checkpoint, model_config, source="test", parts=["unet"], use_ema=True
        )


def test_block_indices_follow_the_config():
    """Released layout (4 levels, 2 res blocks, attention on levels 0-2): spot checks against the
    indices in UPGPT's checkpoints and diffusers' SD1 conversion."""
    unet = released_config().model.unet
    key_map = convert_ldm.unet_key_map(
        unet.channel_mult, unet.num_res_blocks, unet.attention_levels
    )
    prefix = "model.diffusion_model."
    expected = {
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.4.1.proj_in.weight": "down_blocks.1.attentions.0.proj_in.weight",
        "input_blocks.11.0.out_layers.3.bias": "down_blocks.3.resnets.1.conv2.bias",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.bias": "up_blocks.1.upsamplers.0.conv.bias",
        "output_blocks.8.0.skip_connection.weight": "up_blocks.2.resnets.2.conv_shortcut.weight",
        "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (
            "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight"
        ),
        "middle_block.2.emb_layers.1.weight": "mid_block.resnets.1.time_emb_proj.weight",
    }
    for ldm_key, diffusers_key in expected.items():
        assert key_map.to_diffusers(prefix + ldm_key) == diffusers_key
        assert key_map.to_ldm(diffusers_key) == prefix + ldm_key
    assert key_map.to_diffusers(prefix + "input_blocks.12.0.op.weight") is None
    assert key_map.to_diffusers(prefix + "input_blocks.1.0.in_layers.1.weight") is None


def test_released_layout_maps_onto_our_modules():
    """Every parameter of the released-size LDM modules (built on the meta device, so no memory)
    maps onto our modules with its shape."""
    model_config = released_config().model
    with torch.device("meta"):
        modules = {
            "model.diffusion_model": ldm_unet(model_config.unet),
            "first_stage_model": FirstStage(model_config.vae),
            "extra_cond_models.1": LinearProject(
                model_config.fusion.pose_dim, model_config.fusion.context_dim
            ),
        }
    checkpoint = {
        f"{prefix}.{key}": value
        for prefix, module in modules.items()
        for key, value in module.state_dict().items()
    }
    expected = abstract_params(model_config)
    for part, key_map in convert_ldm.key_maps(model_config).items():
        renamed = convert_ldm.rename_part(checkpoint, key_map)
        assert renamed.unexpected == []
        match_torch_keys(
            {key: value.shape for key, value in renamed.state_dict.items()},
            expected[part],
            source=part,
        )
    assert count_params(expected["unet"]) == sum(
        param.numel() for param in modules["model.diffusion_model"].parameters()
    )
