"""`python -m upgpt_jax.convert` end to end: files written by PyTorch in, `load_params` out.

References are the PyTorch modules the files were saved from (LDM's, via ldm_fixtures, and
diffusers'). The model config is configs/synthetic_tiny.py with command-line overrides (see
ldm_fixtures), so the config-file and override plumbing is exercised as users run it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from omegaconf import OmegaConf

from ldm_fixtures import (
    CONFIG_FILE,
    CONFIG_OVERRIDES,
    LatentDiffusionWeights,
    assert_diffusers_match,
    assert_pose_matches,
    assert_unet_matches,
    assert_vae_matches,
    tiny_model_config,
)
from references import diffusers_unet, diffusers_vae, randomize_weights
from upgpt_jax.convert.__main__ import main
from upgpt_jax.convert.diffusers_folders import ConfigMismatchError, load_diffusers_unet
from upgpt_jax.weights.params_io import WeightFileError, load_params

OVERRIDES = [f"--config.model.{field}={value}" for field, value in CONFIG_OVERRIDES.items()]


@dataclasses.dataclass
class TrainerState:
    """A non-tensor object in the checkpoint, like Lightning's callback and optimizer state."""

    epoch: int


@pytest.fixture(scope="module")
def model_config():
    return tiny_model_config()


@pytest.fixture(scope="module")
def weights(model_config):
    return LatentDiffusionWeights(model_config, seed=7)


def lightning_checkpoint(path: pathlib.Path, weights: LatentDiffusionWeights) -> pathlib.Path:
    torch.save(
        {
            "state_dict": weights.state_dict(),
            "epoch": 3,
            "callbacks": {"early": TrainerState(3)},
            "hyper_parameters": OmegaConf.create({"warm_up_steps": [10000]}),
            "dirpath": pathlib.PurePosixPath("/logs"),
        },
        path,
    )
    return path


def convert(*args: str) -> int:
    return main(["upgpt_jax.convert", "--config", str(CONFIG_FILE), *OVERRIDES, *args])


def test_ldm_checkpoint_converts_to_matching_params(tmp_path, model_config, weights):
    checkpoint = lightning_checkpoint(tmp_path / "upgpt.ckpt", weights)
    assert convert("--format=ldm", f"--checkpoint={checkpoint}", f"--out={tmp_path / 'out'}") == 0
    params, metadata = load_params(tmp_path / "out")
    assert set(params) == {"unet", "vae", "fusion"}
    assert_unet_matches(params["unet"], model_config, weights.model.diffusion_model)
    assert_vae_matches(params["vae"], model_config, weights.first_stage_model)
    assert_pose_matches(params["fusion"], model_config, weights.extra_cond_models[1])
    assert metadata["format"] == "ldm" and metadata["use_ema"] is False
    assert metadata["sources"][0]["path"] == str(checkpoint)
    assert metadata["config"]["unet"]["norm_groups"] == 32
    assert metadata["param_counts"]["fusion"] == 85 * 64 + 64
    assert "cond_stage_model.transformer.weight" in metadata["ignored_keys"]
    # Restoring onto devices, as the training and sampling entry points do.
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), params
    )
    on_device, _ = load_params(tmp_path / "out", target)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(on_device))
    np.testing.assert_array_equal(
        on_device["fusion"]["pose_proj"]["kernel"], params["fusion"]["pose_proj"]["kernel"]
    )

    # The same weights as .safetensors, EMA UNet only: the EMA buffers are a copy of the model here.
    state_dict = {key: value.contiguous() for key, value in weights.state_dict().items()}
    safetensors.torch.save_file(state_dict, tmp_path / "upgpt.safetensors")
    assert (
        convert(
            "--format=ldm",
            f"--checkpoint={tmp_path / 'upgpt.safetensors'}",
            "--ema",
            "--parts=unet",
            f"--out={tmp_path / 'ema'}",
        )
        == 0
    )
    ema_params, ema_metadata = load_params(tmp_path / "ema")
    assert set(ema_params) == {"unet"} and ema_metadata["use_ema"] is True
    for ours, reference in zip(
        jax.tree.leaves(ema_params["unet"]), jax.tree.leaves(params["unet"]), strict=True
    ):
        np.testing.assert_array_equal(ours, reference)


def test_bad_inputs_give_one_line_errors(tmp_path, capsys, weights):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert (
        convert("--format=ldm", f"--checkpoint={tmp_path / 'junk.ckpt'}", f"--out={tmp_path / 'a'}")
        == 1
    )
    assert "junk.ckpt: cannot be read with torch.load(weights_only=True)" in capsys.readouterr().err

    checkpoint = {
        key: value
        for key, value in weights.state_dict().items()
        if not key.startswith("first_stage")
    }
    torch.save(checkpoint, tmp_path / "no_vae.pt")
    assert (
        convert("--format=ldm", f"--checkpoint={tmp_path / 'no_vae.pt'}", f"--out={tmp_path / 'b'}")
        == 1
    )
    assert re.search(
        r"vae/\* \(all \d+ parameters\): no checkpoint key starts with 'first_stage_model.'",
        capsys.readouterr().err,
    )
    assert not (tmp_path / "b").exists()

    assert convert("--format=ldm", f"--out={tmp_path / 'c'}") == 2
    assert "--format ldm needs --checkpoint" in capsys.readouterr().err
    assert (
        convert(
            "--format=ldm", "--checkpoint=x.ckpt", "--parts=unet,clip", f"--out={tmp_path / 'c'}"
        )
        == 2
    )
    assert "--parts must be a subset of unet,vae,fusion" in capsys.readouterr().err
    assert main(["upgpt_jax.convert", "--format=ldm"]) == 2
    (tmp_path / "done" / "params").mkdir(parents=True)
    assert convert("--format=ldm", "--checkpoint=x.ckpt", f"--out={tmp_path / 'done'}") == 2
    assert "--out already holds converted params" in capsys.readouterr().err

    with pytest.raises(WeightFileError, match="not found"):
        load_params(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightFileError, match="missing"):
        load_params(tmp_path / "empty")


def diffusers_modules(model_config, seed: int = 11):
    return (
        randomize_weights(diffusers_unet(model_config.unet), seed),
        randomize_weights(diffusers_vae(model_config.vae), seed + 1),
    )


def test_diffusers_folders_convert_to_matching_params(tmp_path, model_config):
    torch_unet, torch_vae = diffusers_modules(model_config)
    torch_unet.save_pretrained(tmp_path / "unet")
    # The VAE as an old-style folder: a .bin with the pre-0.14 attention names.
    torch_vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    legacy = {
        key.replace("to_q", "query")
        .replace("to_k", "key")
        .replace("to_v", "value")
        .replace("to_out.0", "proj_attn"): value
        for key, value in torch_vae.state_dict().items()
    }
    torch.save(legacy, tmp_path / "vae" / "diffusion_pytorch_model.bin")

    assert (
        convert(
            "--format=diffusers",
            f"--unet_dir={tmp_path / 'unet'}",
            f"--vae_dir={tmp_path / 'vae'}",
            f"--out={tmp_path / 'out'}",
        )
        == 0
    )
    params, metadata = load_params(tmp_path / "out")
    assert set(params) == {"unet", "vae"} and len(metadata["sources"]) == 2

    assert_diffusers_match(params, model_config, torch_unet, torch_vae)


def test_diffusers_config_mismatch_lists_every_field(tmp_path, capsys, model_config):
    torch_unet, _ = diffusers_modules(model_config)
    torch_unet.save_pretrained(tmp_path / "unet")
    other = model_config.copy_and_resolve_references()
    other.unet.update(channels=64, context_dim=32)
    with pytest.raises(ConfigMismatchError) as raised:
        load_diffusers_unet(tmp_path / "unet", other)
    message = str(raised.value)
    assert (
        "block_out_channels (channels * channel_mult): folder has [32, 64, 64], "
        "our config needs [64, 128, 128]" in message
    )
    assert "cross_attention_dim (context_dim): folder has 64, our config needs 32" in message
    assert (
        convert(
            "--format=diffusers",
            f"--unet_dir={tmp_path / 'unet'}",
            "--config.model.unet.num_heads=2",
            f"--out={tmp_path / 'out'}",
        )
        == 1
    )
    assert (
        "num_attention_heads (num_heads): folder has [4, 4, 4], our config needs [2, 2, 2]"
        in capsys.readouterr().err
    )
