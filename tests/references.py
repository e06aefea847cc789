"""Test support: the diffusers PyTorch modules our Flax modules are checked against, and the
comparison helpers the parity tests share.

Imported by the test modules as `from references import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

# The kl-f8 first stage of LDM/SD and UPGPT, in our VAE config keys.
KL_F8_VAE = dict(
    in_channels=3, out_channels=3, channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
    z_channels=4, norm_groups=32,
)


def diffusers_unet(unet_config: Mapping) -> UNet2DConditionModel:
    """diffusers' UNet for our UNet config keys (a dict or ConfigDict); attention_head_dim means
    the number of heads, as in SD1's configs."""
    levels = range(len(unet_config["channel_mult"]))
    attention = [level in unet_config["attention_levels"] for level in levels]
    return UNet2DConditionModel(
        in_channels=unet_config["in_channels"],
        out_channels=unet_config["out_channels"],
        block_out_channels=tuple(unet_config["channels"] * m for m in unet_config["channel_mult"]),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        layers_per_block=unet_config["num_res_blocks"],
        attention_head_dim=unet_config["num_heads"],
        transformer_layers_per_block=unet_config.get("transformer_depth", 1),
        cross_attention_dim=unet_config["context_dim"],
        norm_num_groups=unet_config.get("norm_groups", 32),
        use_linear_projection=unet_config.get("use_linear_projection", False),
        act_fn="silu",
    )


def diffusers_vae(vae_config: Mapping) -> AutoencoderKL:
    """diffusers' AutoencoderKL for our VAE config keys (a dict or ConfigDict)."""
    levels = len(vae_config["channel_mult"])
    return AutoencoderKL(
        in_channels=vae_config["in_channels"],
        out_channels=vae_config["out_channels"],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(vae_config["channels"] * m for m in vae_config["channel_mult"]),
        layers_per_block=vae_config["num_res_blocks"],
        latent_channels=vae_config["z_channels"],
        norm_num_groups=vae_config["norm_groups"],
        act_fn="silu",
    )


def randomize_norms(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturbs every 1-D parameter (norm scales/biases start at 1/0, which would hide a swapped
    or missing one); returns the module in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim == 1:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return module.eval()


def randomize_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (LDM zero-initialises output convs): matrices ~ 1/sqrt(fan_in),
    norm scales around 1, biases small; returns the module in eval mode."""
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


def relative_error(ours, reference) -> float:
    """max|ours - reference| / max|reference|, in float32; the shapes must be equal."""
    ours, reference = np.asarray(ours, np.float32), np.asarray(reference, np.float32)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def nchw(x: np.ndarray) -> torch.Tensor:
    """Our NHWC array as a PyTorch NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> np.ndarray:
    """A PyTorch NCHW tensor as an NHWC array, to compare with ours."""
    return x.detach().permute(0, 2, 3, 1).numpy()


def vae_reconstructions_uint8(model, params, images: np.ndarray) -> np.ndarray:
    """uint8 images through a UPGPT's VAE by its public methods: the posterior mean (unscaled),
    the decoder at the model's latent scale, rounded to uint8 in float64."""
    from upgpt_jax.models.upgpt import UPGPT

    x = np.asarray(images, np.float32) / 127.5 - 1.0
    posterior = model.apply({"params": params}, x, method=UPGPT.posterior)
    decoded = model.apply({"params": params}, posterior.mean * model.scale_factor, method=UPGPT.decode)
    return np.clip(np.round((np.asarray(decoded, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
