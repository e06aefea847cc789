"""A run's release (upgpt_jax.rundir.release): one small folder that samples as the run does.

The reference is the run itself: its checkpoint's EMA weights and the CLIP folder it names,
sampled through sample.py's own loader (`sampling.load_from_workdir`) with the same people and seeds.
"""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from upgpt_jax import sampling
from upgpt_jax.rundir.release import release_run, released_config
from upgpt_jax.sampling.sources import DatasetExamples
from upgpt_jax.weights.params_io import save_params

from conftest import scaled_random_params, write_run

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = sampling.SamplingSettings(method="ddim", num_steps=2, batch_size=2,
                                     guidance=(("pose", 1.0), ("style", 2.0), ("text", 2.0)))


@pytest.fixture(scope="module")
def run_with_clip(tmp_path_factory, tiny_config, tiny_model):
    """A diffusion run of the tiny config whose CLIP is a folder (as clip_pretrain writes one), not
    the config's seeded random CLIP."""
    from upgpt_jax.models.clip import clip_from_config
    from upgpt_jax.train.clip_pretrain import write_clip_folder

    root = tmp_path_factory.mktemp("released_run")
    encoders, clip_params = clip_from_config(tiny_config.model.clip, seed=11)
    write_clip_folder(str(root / "clip"), encoders.config, clip_params, np.log(1 / 0.07), {"made_by": "test"})
    config = tiny_config.copy_and_resolve_references()
    config.model.clip.path = str(root / "clip")
    return write_run(root / "run", config, scaled_random_params(tiny_model[1]))


def samples(loaded):
    examples = DatasetExamples(loaded.config, "test")
    return sampling.Sampler(loaded, SETTINGS)([examples.person(index) for index in range(2)], [3, 4])


@pytest.fixture(scope="module")
def run_samples(run_with_clip):
    return samples(sampling.load_from_workdir(run_with_clip))


def folder_bytes(folder):
    return sum(file.stat().st_size for file in pathlib.Path(folder).rglob("*") if file.is_file())


def test_a_float32_release_samples_exactly_as_its_run(run_with_clip, run_samples, tmp_path):
    metadata = release_run(run_with_clip, tmp_path / "release", dtype="float32")
    loaded = sampling.load_from_params(tmp_path / "release")  # no config: the release carries it
    np.testing.assert_array_equal(samples(loaded), run_samples)
    run_config, step = sampling.run_config(run_with_clip)
    assert metadata["sources"] == {"workdir": str(run_with_clip), "step": step, "weights": "ema"}
    assert loaded.config.model.clip.path == str(tmp_path / "release" / "clip")
    assert pathlib.Path(loaded.config.model.clip.path).is_dir()
    released, trained = loaded.config.to_dict(), run_config.to_dict()
    released["model"]["clip"].pop("path"), trained["model"]["clip"].pop("path")
    assert released == trained
    written = json.loads((tmp_path / "release" / "metadata.json").read_text())
    assert written["config"] == written["run_config"]["model"]  # the model config, where the exporter reads it
    weights = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(loaded.params))  # EMA and frozen parts
    assert folder_bytes(tmp_path / "release" / "params") < 1.1 * weights < folder_bytes(run_with_clip)


def test_a_float16_release_is_the_runs_weights_rounded_and_half_the_bytes(run_with_clip, run_samples, tmp_path):
    release_run(run_with_clip, tmp_path / "float32", dtype="float32")
    release_run(run_with_clip, tmp_path / "float16")
    assert folder_bytes(tmp_path / "float16") < 0.55 * folder_bytes(tmp_path / "float32")
    run = sampling.load_from_workdir(run_with_clip)
    half = sampling.load_from_params(tmp_path / "float16")
    for released, trained in zip(jax.tree.leaves(half.params), jax.tree.leaves(run.params), strict=True):
        assert released.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(released), np.asarray(trained).astype(np.float16).astype(np.float32))
    for released, trained in zip(jax.tree.leaves(half.clip_params), jax.tree.leaves(run.clip_params), strict=True):
        np.testing.assert_array_equal(np.asarray(released), np.asarray(trained).astype(np.float16).astype(np.float32))
    assert np.abs(samples(half).astype(int) - run_samples).mean() < 1.0  # uint8 levels


def test_converted_weights_still_need_their_config_and_other_folders_are_named(tiny_model, tmp_path):
    save_params(tmp_path / "converted", scaled_random_params(tiny_model[1]), {"sources": []})
    assert released_config(tmp_path / "converted") is None
    with pytest.raises(ValueError, match="converted.*without a run config: give --config"):
        sampling.load_from_params(tmp_path / "converted")
    with pytest.raises(FileNotFoundError, match="empty is neither a release nor converted weights"):
        sampling.params_config(tmp_path / "empty")


def test_release_refuses_a_vae_stage_run_and_an_unknown_dtype(checkpointed_run, tiny_config, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="--dtype must be one of"):
        release_run(checkpointed_run, tmp_path / "out", dtype="int8")
    vae_config = tiny_config.copy_and_resolve_references()
    vae_config.train.stage = "vae"
    vae_run = write_run(tmp_path / "vae_run", vae_config, scaled_random_params(tiny_model[1]))
    with pytest.raises(ValueError, match="'vae'-stage run; release a diffusion-stage run"):
        release_run(vae_run, tmp_path / "out")


def test_sample_py_reads_a_release_without_config(run_with_clip, run_samples, tmp_path):
    """The command line: release, then sample.py --params DIR with no --config; the file it writes is
    the run's sample of that person and seed."""
    environment = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    release = subprocess.run([sys.executable, "-m", "upgpt_jax.rundir.release", f"--workdir={run_with_clip}",
                              f"--out={tmp_path / 'release'}", "--dtype=float32"],
                             cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert release.returncode == 0, release.stderr[-2000:]
    assert f"python sample.py --params {tmp_path / 'release'}" in release.stdout
    sample = subprocess.run([sys.executable, "sample.py", f"--params={tmp_path / 'release'}", "--task=pose_transfer",
                             "--example=1", "--seed=4", "--num=1", "--method=ddim", "--num_steps=2",
                             "--guidance=pose=1,style=2,text=2", f"--out={tmp_path / 'out'}"],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr[-2000:]
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "out" / "sample_000.png")).astype(int)
    assert np.abs(written - run_samples[1]).max() <= 1  # one sample alone vs a batch of two: XLA rounding


def test_the_committed_reference_release_is_the_documented_runs_and_samples(tmp_path):
    """reference/synthetic_reference (README, "The reference run") was released from a run of
    configs/synthetic_reference.py: its config is that file's but for what the run measured (the
    latent scale) and the folders its command named (VAE run, CLIP), it fits the 20 MB the
    repository allows, and it samples with --params alone."""
    from test_configs import flat, load

    release = REPO / "reference" / "synthetic_reference"
    assert folder_bytes(release) < 20e6
    released = flat(json.loads(sampling.params_config(release).to_json()))
    documented = flat(json.loads(load("synthetic_reference", "diffusion").to_json()))
    assert {key for key in released if released[key] != documented.get(key)} == {
        "model.scale_factor", "train.init_vae_from", "model.clip.path"}
    loaded = sampling.load_from_params(release)
    assert pathlib.Path(loaded.config.model.clip.path) == release / "clip"
    images = samples(loaded)
    assert images.shape == (2, *loaded.config.model.image_size, 3) and images.std() > 10
