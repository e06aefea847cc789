"""Precomputed features: stored records == the encoders' outputs, training from them == training from
pixels, the on-disk layout of several writing processes, and clear refusals.

Uses test_train's `small_config`, so `upgpt_jax.train.build` compiles init, encoders and train step once.
"""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from test_train import read_metrics, small_config
from upgpt_jax.data.features import FeatureSource, FeatureWriter, write_metadata
from upgpt_jax.data.transforms import FEATURE_RECORD_KEYS, FeatureTransform, pixel_transform_from_config
from upgpt_jax.models.clip import clip_from_config, encode_style_images, encode_text_tokens
from upgpt_jax.models.upgpt import UPGPT, build_model
from upgpt_jax.tokenizer import load_clip_tokenizer
from upgpt_jax.train import trainer
from upgpt_jax.train.build import build
from upgpt_jax.train.data import training_pipeline, training_source
from upgpt_jax.train.precompute import precompute

NUM_EXAMPLES, BATCH = 10, 4  # batches of 4, 4 and 2 (+ 2 padding rows that must not be stored)


def features_config():
    config = small_config(batch_size=BATCH, num_steps=2, log_every=1)
    config.data.num_examples = NUM_EXAMPLES
    return config


@pytest.fixture(scope="module")
def precomputed(tmp_path_factory):
    """(folder, summary) of the float32 features of features_config()."""
    folder = tmp_path_factory.mktemp("features")
    summary = precompute(features_config(), folder)
    assert summary["count"] == summary["written"] == NUM_EXAMPLES
    return folder, summary


@pytest.fixture(scope="module")
def features_dir(precomputed):
    return precomputed[0]


def relative_error(got, expected):
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected)) / np.max(np.abs(expected)))


def test_stored_records_equal_the_encoders_outputs(features_dir):
    config = features_config()
    records = [training_source(config.data, config.model)[index] for index in range(NUM_EXAMPLES)]
    pixels = pixel_transform_from_config(config.model, load_clip_tokenizer())(records)
    vae_params = build(config).init().frozen_params  # what a training run starts from
    posterior = jax.jit(lambda params, images: build_model(config.model).apply(
        {"params": params}, images, method=UPGPT.posterior))(vae_params, pixels["image"])
    clip, clip_params = clip_from_config(config.model.clip, seed=config.seed)
    expected_text = np.asarray(encode_text_tokens(clip, clip_params, pixels["text_ids"]))
    expected_style = np.asarray(encode_style_images(clip, clip_params, pixels["styles"]))
    latent_size = np.asarray(posterior.mean).shape[1:3]

    source = FeatureSource(features_dir)
    assert len(source) == NUM_EXAMPLES
    assert json.loads((features_dir / "metadata.json").read_text())["records"]["latent_moments"]["dtype"] == "float32"
    for index, record in enumerate(records):
        stored = source[index]
        assert set(stored) == set(FEATURE_RECORD_KEYS)
        mean, logvar = np.split(stored["latent_moments"], 2, axis=-1)
        assert relative_error(mean, np.asarray(posterior.mean)[index]) < 1e-5
        assert relative_error(logvar, np.asarray(posterior.logvar)[index]) < 1e-5
        assert relative_error(stored["text_embedding"], expected_text[index]) < 1e-5
        assert relative_error(stored["style_embedding"], expected_style[index]) < 1e-5
        # The share of each latent pixel's block the person covers (the config's "area" resize), x 255.
        assert config.data.person_mask_resize == "area"
        share = Image.fromarray((record["mask"][..., 0] > 0).astype(np.float32)).resize(latent_size[::-1], Image.BOX)
        np.testing.assert_array_equal(stored["mask"][..., 0], np.round(np.asarray(share) * 255))
        np.testing.assert_array_equal(stored["smpl"], record["smpl"])
        np.testing.assert_array_equal(stored["style_present"], record["style_present"])
    with pytest.raises(IndexError):
        source[NUM_EXAMPLES]


def test_half_precision_features_are_half_the_size_and_read_back_as_float32(precomputed, tmp_path):
    features_dir, full_summary = precomputed
    summary = precompute(features_config(), tmp_path, dtype="float16")
    full, half = FeatureSource(features_dir), FeatureSource(tmp_path)
    assert half[3]["latent_moments"].dtype == np.float16
    batch = FeatureTransform()([half[3]])
    assert batch["latent_moments"].dtype == np.float32
    np.testing.assert_allclose(batch["latent_moments"][0], full[3]["latent_moments"], rtol=2e-3, atol=2e-3)
    assert summary["record_bytes"] < 0.6 * full_summary["record_bytes"]


def test_training_from_features_equals_training_from_pixels(features_dir, tmp_path):
    config = features_config()
    trainer.train(config, tmp_path / "pixels")
    config.data.features_dir = str(features_dir)
    trainer.train(config, tmp_path / "features")
    from_pixels, from_features = read_metrics(tmp_path / "pixels"), read_metrics(tmp_path / "features")
    assert [row["step"] for row in from_features] == [row["step"] for row in from_pixels] == [1, 2]
    for got, expected in zip(from_features, from_pixels):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("field, value", [("model.vae.channels", 16), ("model.image_size", (32, 24)), ("seed", 1),
                                          ("data.person_mask_resize", "nearest")])
def test_features_of_another_encoder_config_are_refused_naming_the_field(features_dir, field, value):
    config = features_config()
    config.data.features_dir = str(features_dir)
    *parents, name = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[name] = value
    with pytest.raises(ValueError, match=f"{field.replace('.', '[.]')}: features .*, config "):
        training_pipeline(config)


def test_a_missing_or_unfinished_features_dir_is_a_clear_error(tmp_path):
    config = features_config()
    config.data.features_dir = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="features_dir .*absent.* is not a folder"):
        training_pipeline(config)
    config.data.features_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="metadata.json is missing|metadata.json.*missing"):
        training_pipeline(config)


def test_records_written_by_several_processes_read_back_in_source_order(tmp_path):
    """10 examples, global batch 4 over 2 processes: each wrote 2 rows of every batch, the last batch's
    padding (rows 10, 11) dropped; record i must come back as example i."""
    count, global_batch, processes = 10, 4, 2

    def record(index):
        return {key: np.full((2,), index, np.float32) for key in FEATURE_RECORD_KEYS}

    for process in range(processes):
        with FeatureWriter(tmp_path, process, processes) as writer:
            for start in range(0, count, global_batch):
                first = start + process * (global_batch // processes)
                for index in range(first, min(first + global_batch // processes, count)):
                    writer.write(record(index))
    write_metadata(tmp_path, count=count, global_batch_size=global_batch, process_count=processes,
                   example=record(0), signature={}, info={})
    source = FeatureSource(tmp_path)
    assert [int(source[index]["smpl"][0]) for index in range(count)] == list(range(count))
