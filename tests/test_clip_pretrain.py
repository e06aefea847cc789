"""Contrastive pre-training of the tiny CLIP (upgpt_jax.train.clip_pretrain): its loss against a
numpy/scipy reference, its pairs, and a short run whose folder `load_clip` reads back."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from configs.synthetic_tiny import get_config
from upgpt_jax.cli_errors import BadInput
from upgpt_jax.data.synthetic import PARTS, identity_from_id, make_example
from upgpt_jax.data.synthetic.identity import describe_part
from upgpt_jax.models.clip import clip_from_config, load_clip
from upgpt_jax.tokenizer import load_clip_tokenizer, tokenize
from upgpt_jax.train.clip_pretrain import (REPORT_FILE, ContrastivePairs, cut_text_ids, multi_positive_clip_loss,
                                           pretrain_clip, retrieval_accuracy, square_on_background)


def reference_loss(first, second, first_labels, second_labels, scale):
    """The symmetric InfoNCE written out per row with scipy: -mean over positives of log p."""
    first = first / np.linalg.norm(first, axis=1, keepdims=True)
    second = second / np.linalg.norm(second, axis=1, keepdims=True)
    logits = scale * first @ second.T
    losses = []
    for matrix, rows, columns in ((logits, first_labels, second_labels), (logits.T, second_labels, first_labels)):
        log_p = log_softmax(matrix, axis=1)
        per_row = [-np.mean(log_p[i][columns == rows[i]]) for i in range(len(rows))]
        losses.append(np.mean(per_row))
    return np.mean(losses)


def test_multi_positive_loss_matches_reference_and_reduces_to_clip_with_distinct_labels():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    labels = np.array([0, 1, 1, 2, 0, 1])
    got = multi_positive_clip_loss(jnp.asarray(first), jnp.asarray(second), jnp.asarray(labels), jnp.asarray(labels),
                                   jnp.float32(7.0))
    np.testing.assert_allclose(got, reference_loss(first, second, labels, labels, 7.0), rtol=1e-5)
    # Distinct labels: CLIP's own loss, the cross-entropy of the diagonal.
    distinct = np.arange(6)
    logits = 3.0 * (first / np.linalg.norm(first, axis=1, keepdims=True)) @ (
        second / np.linalg.norm(second, axis=1, keepdims=True)).T
    clip = -(np.trace(log_softmax(logits, axis=1)) + np.trace(log_softmax(logits.T, axis=1))) / 12
    got = multi_positive_clip_loss(jnp.asarray(first), jnp.asarray(second), jnp.asarray(distinct),
                                   jnp.asarray(distinct), jnp.float32(3.0))
    np.testing.assert_allclose(got, clip, rtol=1e-5)


def test_pairs_hold_each_present_part_with_its_text():
    pairs = ContrastivePairs("train", 3, (64, 48), 32, seed=0)
    texts = [str(pairs.part_texts[label]) for label in pairs.crop_labels]
    expected = []
    for index in range(3):
        example = make_example(index, "train")
        identity = identity_from_id(int(example["identity"]))
        present = dict(zip(PARTS, example["style_present"]))
        expected += [describe_part(identity, part) for part in ("hair", "top", "bottom", "shoes") if present[part]]
        assert pairs.texts[pairs.image_labels[index]] == example["text"]
    assert texts == expected
    assert pairs.crops.shape == (len(expected), 32, 32, 3) and pairs.images.shape == (3, 32, 32, 3)


def test_square_on_background_keeps_the_whole_person():
    image = np.zeros((8, 6, 3), np.uint8)
    image[0, :] = 255  # the top row (the head) must survive
    square = square_on_background(image, (10, 20, 30), 8)
    assert square.shape == (8, 8, 3)
    assert (square[:, 0] == (10, 20, 30)).all() and (square[:, -1] == (10, 20, 30)).all()
    assert square[0, 1:7].min() > 128


def test_cut_text_ids_refuses_to_lose_the_end_of_a_text():
    ids = np.array([[49406, 5, 6, 49407, 49407, 49407], [49406, 5, 6, 7, 8, 49407]])
    np.testing.assert_array_equal(cut_text_ids(ids[:1], 4), ids[:1, :4])
    with pytest.raises(BadInput, match="text_length 4 cuts a text"):
        cut_text_ids(ids, 4)


def small_config(**settings):
    config = get_config()
    config.clip_pretrain.update(num_examples=48, num_test_examples=16, num_steps=60, batch_size=32,
                                warmup_steps=5, log_every=30, **settings)
    return config


def test_a_short_run_learns_and_writes_a_folder_load_clip_reads(tmp_path):
    config = small_config(learning_rate=3e-3)
    report = pretrain_clip(config, str(tmp_path / "clip"))
    assert json.loads((tmp_path / "clip" / REPORT_FILE).read_text()) == json.loads(json.dumps(report))
    assert report["curve"][-1]["loss"] < report["curve"][0]["loss"]
    clip, params = load_clip(tmp_path / "clip")
    # The folder's weights are the trained ones: they score the held-out pairs as the report says,
    # and better than the random CLIP they started from.
    test = ContrastivePairs("test", 16, (64, 48), 32, seed=config.seed)
    ids = tokenize(load_clip_tokenizer(), list(test.part_texts))[:, :32]
    accuracy = retrieval_accuracy(clip, params, test.crops, test.crop_labels, ids)
    assert accuracy == pytest.approx(report["test_crop_to_part_text"])
    random_encoders, random_params = clip_from_config(config.model.clip, seed=config.seed)
    assert accuracy > retrieval_accuracy(random_encoders, random_params, test.crops, test.crop_labels, ids)


@pytest.mark.parametrize("field, value, message", [
    ("model.clip.path", "/some/clip", "leave the path empty"),
    ("data.data_dir", "/some/data", "synthetic people rendered in memory"),
    ("clip_pretrain.warmup_steps", 60, "warmup_steps must be in"),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, field, value, message):
    config = small_config()
    section, name = field.rsplit(".", 1)
    target = config
    for part in section.split("."):
        target = target[part]
    target[name] = value
    with pytest.raises(BadInput, match=message):
        pretrain_clip(config, str(tmp_path / "clip"))
    assert not (tmp_path / "clip" / "config.json").exists()
