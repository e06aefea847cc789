"""The trainer's build phase: what is built once per configuration, each stage's step input, and
precompute building the encoders alone."""
import jax
import numpy as np
import pytest

from test_train import random_features, small_config
from upgpt_jax.data.pipeline import make_global_batch
from upgpt_jax.models.clip import encode_style_images, encode_text_tokens
from upgpt_jax.models.unet import UNet
from upgpt_jax.models.upgpt import UPGPT, build_model, example_inputs
from upgpt_jax.train.build import build
from upgpt_jax.train.data import training_pipeline
from upgpt_jax.train.precompute import precompute
from upgpt_jax.train.step import FEATURE_KEYS


def test_runs_that_differ_in_loop_settings_or_data_share_what_is_built():
    config = small_config()
    parts = build(config)
    assert build(small_config(num_steps=99, log_every=7)) is parts
    config.data.num_examples = 5
    assert build(config) is parts
    config.model.scale_factor = 0.5  # another step, but the same mesh, model and encoders
    rescaled = build(config)
    assert rescaled is not parts and rescaled.encoders is parts.encoders
    assert rescaled.model.scale_factor == 0.5 and parts.model.scale_factor == small_config().model.scale_factor


def test_the_vae_stage_sends_the_images_alone_and_feeds_them_to_its_step_as_they_are():
    stage = build(small_config(stage="vae")).stage
    assert (stage.name, stage.trainable, stage.frozen) == ("vae", ("vae",), ())
    assert stage.metrics == ("rec_l1", "kl") and stage.flops_per_image is None and not stage.previews
    host = {"image": np.zeros((2, 64, 48, 3), np.float32), "pose": np.zeros((2, 4), np.float32)}
    assert list(stage.host_batch(host)) == ["image"]
    batch = {"image": jax.numpy.zeros((2, 64, 48, 3))}
    assert stage.step_input({}, batch) is batch


def test_the_diffusion_stage_feeds_precomputed_features_as_they_are():
    config = small_config()
    stage = build(config).stage
    assert stage.trainable == ("unet", "fusion") and stage.metrics == () and stage.flops_per_image > 0
    features = random_features(config, 0)
    assert stage.host_batch(features) == features
    assert stage.step_input({}, features) is features  # no encoder runs: no params needed


def test_the_diffusion_stage_encodes_a_pixel_batch_with_the_frozen_vae_and_clip():
    config = small_config()
    parts = build(config)
    vae = {"vae": parts.init().frozen_params["vae"]}
    with training_pipeline(config) as pipeline:
        pixels = next(pipeline)
    batch = make_global_batch(parts.stage.host_batch(pixels), parts.mesh, config.axis_rules)
    features = jax.device_get(parts.stage.step_input(vae, batch, compile_label="encode"))

    assert set(features) == set(FEATURE_KEYS)
    posterior = parts.model.apply({"params": vae}, pixels["image"], method=UPGPT.posterior)
    encoders = parts.encoders
    expected = {
        "latent_moments": np.concatenate([posterior.mean, posterior.logvar], axis=-1),
        "text_embedding": encode_text_tokens(encoders.clip, encoders.clip_params, pixels["text_ids"]),
        "style_embedding": encode_style_images(encoders.clip, encoders.clip_params, pixels["styles"]),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(features[key], np.asarray(value), rtol=1e-4, atol=1e-5, err_msg=key)
    for key in ("person_mask", "style_present", "pose"):
        np.testing.assert_array_equal(features[key], pixels[key])


def test_precompute_builds_the_encoders_alone(tmp_path, monkeypatch):
    def no_unet(*args, **kwargs):
        raise AssertionError("precompute ran the UNet")

    monkeypatch.setattr(UNet, "__call__", no_unet)
    config = small_config(batch_size=4)
    config.data.num_examples = 4
    summary = precompute(config, tmp_path)
    assert summary["written"] == 4
    with pytest.raises(AssertionError, match="ran the UNet"):  # while a whole-model init would run it
        jax.eval_shape(build_model(config.model).init, jax.random.key(0), **example_inputs(config.model))
