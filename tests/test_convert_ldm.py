"""The LDM/UPGPT checkpoint import, against LDM's own PyTorch modules.

The reference state dicts come from LDM's `openaimodel.UNetModel`, `model.Encoder`/`Decoder` and
`ema.LitEma` as shipped by the `stable-diffusion-sdkit` package (Stability's fork of the LDM code,
same module names as UPGPT's copy), with random weights. The renamed dict must load strictly into
diffusers' modules, and the converted params into our Flax modules, with the same outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_fixtures import (
    TOLERANCE,
    FirstStage,
    LatentDiffusionWeights,
    LinearProject,
    assert_pose_matches,
    assert_unet_matches,
    assert_vae_matches,
    ldm_unet,
    run_ldm_unet,
    tiny_model_config,
    unet_inputs,
)
from references import diffusers_unet, diffusers_vae, relative_error
from upgpt_jax.config_base import released_config
from upgpt_jax.convert import ldm as convert_ldm
from upgpt_jax.convert.part_shapes import abstract_params, count_params
from upgpt_jax.weights.torch_params import WeightConversionError, match_torch_keys


@pytest.fixture(scope="module")
def model_config():
    return tiny_model_config()


@pytest.fixture(scope="module")
def weights(model_config):
    return LatentDiffusionWeights(model_config)


def test_renamed_unet_loads_into_diffusers_with_same_outputs(model_config, weights):
    key_map = convert_ldm.key_maps(model_config)["unet"]
    renamed = convert_ldm.rename_part(weights.checkpoint(), key_map)
    assert renamed.unexpected == []
    reference = diffusers_unet(model_config.unet).eval()
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in renamed.state_dict.items()}, strict=True
    )
    for diffusers_key, ldm_key in renamed.origin.items():
        assert key_map.to_ldm(diffusers_key) == ldm_key
    sample, timesteps, context = unet_inputs(model_config)
    with torch.no_grad():
        ours = reference(sample, timesteps, encoder_hidden_states=context).sample.numpy()
    expected = run_ldm_unet(weights.model.diffusion_model, sample, timesteps, context).numpy()
    assert relative_error(ours, expected) <= TOLERANCE


def test_renamed_vae_loads_into_diffusers_with_same_outputs(model_config, weights):
    renamed = convert_ldm.rename_part(
        weights.checkpoint(), convert_ldm.key_maps(model_config)["vae"]
    )
    assert renamed.unexpected == []
    reference = diffusers_vae(model_config.vae).eval()
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
        match=rf"unet/conv_out/bias \({model_config.unet.out_channels},\), checkpoint key "
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
