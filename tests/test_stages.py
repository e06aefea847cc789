"""The two training stages end to end: a VAE-stage run, then a diffusion run that starts from its
VAE, logs to TensorBoard and writes sample grids of its validation conditions."""
import json

import jax
import numpy as np
import pytest

from upgpt_jax.models.upgpt import UPGPT, build_model
from upgpt_jax.rundir.restore import run_config
from upgpt_jax.rundir.layout import METRICS_FILE, TENSORBOARD_DIR
from upgpt_jax.train import condition_stats, latent_scale, trainer
from upgpt_jax.train.data import training_pipeline
from upgpt_jax.train.previews import SAMPLES_DIR

from references import vae_reconstructions_uint8  # noqa: E402  (tests/ is on sys.path under pytest)
from test_train import small_config  # noqa: E402


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vae")
    config = small_config(stage="vae", num_steps=3)
    result = trainer.train(config, workdir)
    return workdir, result


def test_vae_stage_trains_the_autoencoder_alone(vae_run):
    workdir, result = vae_run
    assert result.stop_reason == "done" and result.last_checkpoint == 3
    assert set(result.state.params) == {"vae"} and result.state.frozen_params == {}
    records = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3]
    for record in records:  # the loss is its terms: L1 + kl_weight * KL (LPIPS off without weights)
        assert record["rec_l1"] > 0 and record["kl"] > 0
        assert record["loss"] == pytest.approx(record["rec_l1"] + 1e-6 * record["kl"] / (3 * 64 * 48), rel=1e-4)


def test_eval_scores_a_vae_stage_run_by_its_reconstructions(vae_run, tmp_path):
    """eval.py --protocol synthetic on a VAE-stage run: autoencoder/* alone, from the run's EMA VAE."""
    from upgpt_jax.eval.protocols import EvalOptions, load_protocols
    from upgpt_jax.eval.synthetic import SCORED_PARTS, pose_transfer_scores
    from upgpt_jax.sampling.sources import DatasetExamples

    workdir, result = vae_run
    evaluated = load_protocols()["synthetic"](EvalOptions(out_dir=str(tmp_path), workdir=str(workdir),
                                                          num_examples=3, batch_size=2))
    names = ("silhouette_iou", "colour_accuracy", "ssim", "psnr") + tuple(f"colour_accuracy/{part}"
                                                                          for part in SCORED_PARTS)
    assert set(evaluated.metrics) == {f"autoencoder/{name}" for name in names}
    config = run_config(workdir)[0]
    truth = np.stack([DatasetExamples(config, "test").image(index) for index in range(3)])
    expected = vae_reconstructions_uint8(build_model(config.model), jax.device_get(result.state.ema_params), truth)
    reference = pose_transfer_scores(expected, truth)
    for name in ("ssim", "psnr"):
        np.testing.assert_allclose(evaluated.per_example[f"autoencoder/{name}"], reference[name], rtol=1e-3)
    assert [images[1].shape for _, images in evaluated.worst] == [truth.shape[1:]] * 3


def test_diffusion_stage_starts_from_the_trained_vae_and_previews(vae_run, tmp_path, monkeypatch):
    vae_workdir, vae_result = vae_run
    config = small_config(num_steps=2, sample_every=2, num_previews=2, init_vae_from=str(vae_workdir))
    config.sampling.update(num_steps=2, batch_size=2)
    config.model.scale_by_std = True
    config.model.update(standardize_conditions=True, condition_stats_examples=20)  # 3 batches of 8
    result = trainer.train(config, tmp_path)
    trained_vae = jax.device_get(vae_result.state.ema_params["vae"])
    used_vae = jax.device_get(result.state.frozen_params["vae"])
    jax.tree.map(np.testing.assert_array_equal, used_vae, trained_vae)

    # scale_by_std: 1 / std of the first batch's latent means under the trained VAE, kept in the run's config.
    with training_pipeline(config) as pipeline:
        images = next(pipeline)["image"]
    means = build_model(config.model).apply({"params": {"vae": trained_vae}}, images, method=UPGPT.posterior).mean
    expected = 1.0 / np.std(np.asarray(means, np.float64))
    measured = run_config(tmp_path)[0].model.scale_factor
    assert measured == pytest.approx(expected, rel=1e-4)

    # standardize_conditions: statistics of the first 3 batches' CLIP embeddings, frozen through training.
    expected_stats = reference_condition_stats(config, num_batches=3)
    measured_stats = jax.device_get(result.state.frozen_params["condition_stats"])
    for name, value in expected_stats.items():
        np.testing.assert_allclose(measured_stats[name], value, rtol=2e-4, atol=1e-5, err_msg=name)

    grid = tmp_path / SAMPLES_DIR / "step_0000002.png"
    assert grid.is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR), size_guidance={"images": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2]
    logged = json.loads((tmp_path / METRICS_FILE).read_text().splitlines()[-1])
    assert events.Scalars("loss")[-1].value == pytest.approx(logged["loss"], rel=1e-6)
    (image,) = events.Images("samples")
    assert image.step == 2 and image.height > 0

    config.train.num_steps = 3  # a resumed run reads the scale back, it does not measure again

    def measure_again(*args):
        raise AssertionError("a resumed run measured the scale again")

    monkeypatch.setattr(latent_scale, "measure_scale_factor", measure_again)
    monkeypatch.setattr(condition_stats, "measure_condition_stats", measure_again)
    resumed_result = trainer.train(config, tmp_path)
    resumed, step = run_config(tmp_path)
    assert step == 3 and resumed.model.scale_factor == measured
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed_result.state.frozen_params["condition_stats"]),
                 measured_stats)


def reference_condition_stats(config, num_batches):
    """Mean per token and feature, 1 / pooled std around it (style: present parts only), in numpy."""
    from upgpt_jax.models.clip import clip_from_config, encode_style_images, encode_text_tokens

    clip, clip_params = clip_from_config(config.model.clip, seed=config.seed)
    texts, styles, presents = [], [], []
    with training_pipeline(config) as pipeline:
        for _ in range(num_batches):
            batch = next(pipeline)
            texts.append(np.asarray(encode_text_tokens(clip, clip_params, batch["text_ids"]), np.float64))
            styles.append(np.asarray(encode_style_images(clip, clip_params, batch["styles"]), np.float64))
            presents.append(np.asarray(batch["style_present"], bool))
    text, style, present = np.concatenate(texts), np.concatenate(styles), np.concatenate(presents)
    text_mean = text.mean(0)
    style_mean = np.stack([style[present[:, part], part].mean(0) if present[:, part].any()  # else 0
                           else np.zeros(style.shape[-1]) for part in range(style.shape[1])])
    style_deviations = (style - style_mean)[present]
    return {"text_mean": text_mean, "text_scale": 1.0 / np.sqrt(np.mean(np.square(text - text_mean))),
            "style_mean": style_mean, "style_scale": 1.0 / np.sqrt(np.mean(np.square(style_deviations)))}


def test_a_vae_that_does_not_fit_is_refused(vae_run, tmp_path):
    vae_workdir, _ = vae_run
    config = small_config(num_steps=1, init_vae_from=str(vae_workdir))
    config.model.vae.channels = 16
    with pytest.raises(ValueError, match="does not fit this config's model.vae"):
        trainer.train(config, tmp_path)
