"""`python -m upgpt_jax.convert --export`: our weights back to the original's PyTorch layouts.

An LDM checkpoint written by LDM's own modules (ldm_fixtures) is imported by the converter and
exported again: the keys and values must come back unchanged, and the exported files must load
into LDM's (sdkit) and diffusers' PyTorch modules whose outputs match our JAX modules. A training
workdir (conftest's checkpointed_run) exports its EMA or raw weights.
"""

from __future__ import annotations

import copy
import io

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ldm_fixtures import (
    LatentDiffusionWeights,
    assert_diffusers_match,
    assert_pose_matches,
    assert_unet_matches,
    assert_vae_matches,
    tiny_model_config,
)
from test_convert_cli import convert, lightning_checkpoint
from test_object_storage import BUCKET, gcs, gcs_emulator  # noqa: F401 (fixtures)
from upgpt_jax import storage
from upgpt_jax.convert import ldm as convert_ldm
from upgpt_jax.convert.__main__ import main
from upgpt_jax.convert.diffusers_folders import load_diffusers_unet, load_diffusers_vae
from upgpt_jax.weights.params_io import load_params
from upgpt_jax.weights.weight_files import read_state_dict
from upgpt_jax.rundir.restore import restore_params, run_config

# What the fixture's checkpoint holds beyond the converted parts: CLIP stand-ins, the schedule, the
# first stage's training loss. Everything else must come back from an export.
NOT_EXPORTED = ("cond_stage_model.", "extra_cond_models.0.", "first_stage_model.loss.", "betas")


@pytest.fixture(scope="module")
def model_config():
    return tiny_model_config()


@pytest.fixture(scope="module")
def imported(tmp_path_factory, model_config):
    """(LDM weights, their checkpoint as saved, the converted-params directory)."""
    folder = tmp_path_factory.mktemp("imported")
    weights = LatentDiffusionWeights(model_config, seed=21)
    checkpoint = lightning_checkpoint(folder / "upgpt.ckpt", weights)
    assert convert("--format=ldm", f"--checkpoint={checkpoint}", f"--out={folder / 'params'}") == 0
    return weights, weights.state_dict(), folder / "params"


def export(*args: str) -> int:
    return main(["upgpt_jax.convert", *args])


def test_ldm_round_trip_gives_the_same_keys_and_values(tmp_path, imported):
    _, original, params_dir = imported
    out = tmp_path / "back.ckpt"
    assert export("--export=ldm", f"--params={params_dir}", "--ema", f"--out={out}") == 0
    exported = torch.load(out, weights_only=True)
    assert set(exported) == {"state_dict"}
    exported = exported["state_dict"]
    assert set(exported) == {key for key in original if not key.startswith(NOT_EXPORTED)}
    for key, value in exported.items():
        assert value.dtype == original[key].dtype, key
        torch.testing.assert_close(value, original[key], rtol=0, atol=0, msg=key)


def test_exported_ldm_checkpoint_loads_into_ldm_modules(tmp_path, imported, model_config):
    _, _, params_dir = imported
    out = tmp_path / "upgpt.ckpt"
    assert export("--export=ldm", f"--params={params_dir}", "--ema", f"--out={out}") == 0
    other = LatentDiffusionWeights(model_config, seed=22)  # Other weights, all to be replaced.
    result = other.load_state_dict(torch.load(out, weights_only=True)["state_dict"], strict=False)
    assert result.unexpected_keys == []
    assert all(key.startswith(NOT_EXPORTED) for key in result.missing_keys)
    params, _ = load_params(params_dir)
    assert_unet_matches(params["unet"], model_config, other.model.diffusion_model)
    assert_vae_matches(params["vae"], model_config, other.first_stage_model)
    assert_pose_matches(params["fusion"], model_config, other.extra_cond_models[1])
    ema_model = copy.deepcopy(other.model)
    other.model_ema.copy_to(ema_model)  # What LatentDiffusion's ema_scope samples with.
    assert_unet_matches(params["unet"], model_config, ema_model.diffusion_model)


def test_exported_diffusers_folders_load_into_diffusers(tmp_path, imported, model_config):
    _, _, params_dir = imported
    out = tmp_path / "diffusers"
    assert export("--export=diffusers", f"--params={params_dir}", f"--out={out}") == 0
    torch_unet = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    torch_vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    assert torch_vae.config.scaling_factor == pytest.approx(model_config.scale_factor)
    params, _ = load_params(params_dir)
    assert_diffusers_match(params, model_config, torch_unet, torch_vae)
    # And back through the diffusers import: the same arrays.
    assert convert(
        "--format=diffusers", f"--unet_dir={out / 'unet'}", f"--vae_dir={out / 'vae'}",
        f"--out={tmp_path / 'again'}",
    ) == 0  # fmt: skip
    again, _ = load_params(tmp_path / "again")
    for part in ("unet", "vae"):
        jax.tree.map(np.testing.assert_array_equal, again[part], params[part])


def test_workdir_exports_its_ema_or_raw_weights(tmp_path, checkpointed_run):
    config, step = run_config(checkpointed_run)
    raw = jax.device_get(restore_params(checkpointed_run, config, step, "params"))
    ema = jax.device_get(restore_params(checkpointed_run, config, step, "ema"))
    out = tmp_path / "run.ckpt"
    assert export(
        "--export=ldm", f"--workdir={checkpointed_run}", "--weights=params", "--ema", f"--out={out}"
    ) == 0  # fmt: skip
    state_dict = read_state_dict(out)
    assert float(state_dict[convert_ldm.EMA_DECAY_KEY]) == pytest.approx(config.train.ema_decay)
    assert int(state_dict[convert_ldm.EMA_UPDATES_KEY]) == step
    for use_ema, expected in ((False, raw), (True, ema)):
        back = convert_ldm.convert_ldm_state_dict(
            state_dict, config.model, source="test", use_ema=use_ema
        ).params
        jax.tree.map(np.testing.assert_array_equal, back["unet"], expected["unet"])
        jax.tree.map(np.testing.assert_array_equal, back["vae"], expected["vae"])
    # LitEma covers the UNet only: the pose projection is the run's --weights choice.
    np.testing.assert_array_equal(
        back["fusion"]["pose_proj"]["kernel"], raw["fusion"]["pose_proj"]["kernel"]
    )
    assert not np.array_equal(raw["unet"]["conv_in"]["kernel"], ema["unet"]["conv_in"]["kernel"])

    folders = tmp_path / "diffusers"
    assert export("--export=diffusers", f"--workdir={checkpointed_run}", f"--out={folders}") == 0
    unet, _ = load_diffusers_unet(folders / "unet", config.model)
    vae, _ = load_diffusers_vae(folders / "vae", config.model)
    jax.tree.map(np.testing.assert_array_equal, unet, ema["unet"])
    jax.tree.map(np.testing.assert_array_equal, vae, ema["vae"])


def test_exports_to_a_bucket(tmp_path, imported, gcs):
    """gs:// outputs (a local GCS emulator) hold what a local export writes."""
    _, _, params_dir = imported
    for layout, name in (("ldm", "upgpt.ckpt"), ("diffusers", "diffusers")):
        for out in (tmp_path / name, f"{BUCKET}/{name}"):
            assert export(f"--export={layout}", f"--params={params_dir}", f"--out={out}") == 0
    assert export("--export=ldm", f"--params={params_dir}", f"--out={BUCKET}/upgpt.ckpt") == 2
    remote = storage.path(f"{BUCKET}/upgpt.ckpt").read_bytes()
    local = torch.load(tmp_path / "upgpt.ckpt", weights_only=True)["state_dict"]
    remote = torch.load(io.BytesIO(remote), weights_only=True)["state_dict"]
    assert set(remote) == set(local)
    for key, value in remote.items():
        torch.testing.assert_close(value, local[key], rtol=0, atol=0, msg=key)
    for part in ("unet", "vae"):
        for file in ("config.json", "diffusion_pytorch_model.safetensors"):
            remote = storage.path(f"{BUCKET}/diffusers/{part}/{file}").read_bytes()
            assert remote == (tmp_path / "diffusers" / part / file).read_bytes()


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys, imported):
    _, _, params_dir = imported
    cases = {
        (f"--params={tmp_path / 'nowhere'}", f"--out={tmp_path / 'a.ckpt'}"): "not found",
        ("--export=onnx", f"--params={params_dir}", f"--out={tmp_path / 'a'}"): "--export",
        (f"--params={params_dir}", f"--workdir={tmp_path}", f"--out={tmp_path / 'a'}"): "one of",
        (f"--params={params_dir}", f"--out={params_dir}"): "--out exists already",
        (f"--workdir={tmp_path}", f"--out={tmp_path / 'a'}"): "no checkpoints/ folder",
    }
    for args, message in cases.items():
        args = args if args[0].startswith("--export") else ("--export=ldm", *args)
        assert export(*args) == 2, args
        error = capsys.readouterr().err
        assert message in error.splitlines()[0], (args, error)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.ckpt").exists()
