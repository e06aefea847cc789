"""End to end: the synthetic_people builder's records, read back through TFDS, through the input pipeline.

Every value a batch holds is checked against the generator's own output for the pair the
record names, not against the stored record, so a slip anywhere on the way (pair indexing,
encoding, reading, batching, transforms) shows.
"""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from upgpt_jax.data.builders.synthetic_people import SyntheticPeople
from upgpt_jax.data.pipeline import InputPipeline
from upgpt_jax.data.synthetic import make_example
from upgpt_jax.data.transforms import pixel_transform_from_config
from upgpt_jax.models.clip import clip_preprocess
from upgpt_jax.tokenizer import load_clip_tokenizer, tokenize

NUM_PAIRS, BATCH_SIZE = 16, 8
CLIP_BOS = 49406  # <|startoftext|> in CLIP's vocabulary


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    builder = SyntheticPeople(data_dir=tmp_path_factory.mktemp("tfds"), num_examples=NUM_PAIRS, workers=1)
    builder.download_and_prepare()
    return tfds.builder_from_directory(builder.data_path).as_data_source("train")


def _batches_with_indices(pipeline):
    """(record indices, batch) for every batch of the pipeline's epochs."""
    while True:
        state = pipeline.get_state()
        try:
            batch = next(pipeline)
        except StopIteration:
            return
        yield pipeline.local_indices(state["epoch"], state["position"]), batch


def test_built_dataset_through_the_input_pipeline(source, tiny_config):
    tokenizer = load_clip_tokenizer()
    transform = pixel_transform_from_config(tiny_config.model, tokenizer, include_source_image=True)
    pipeline = InputPipeline(source, BATCH_SIZE, transform, seed=3, num_epochs=1, process_index=0, process_count=1)
    clip_size = tiny_config.model.clip.image_size
    downsample = 2 ** (len(tiny_config.model.vae.channel_mult) - 1)
    seen = []
    for indices, batch in _batches_with_indices(pipeline):
        assert {name: (value.shape, value.dtype) for name, value in batch.items()} == {
            "image": ((BATCH_SIZE, 64, 48, 3), np.float32),
            "source_image": ((BATCH_SIZE, 64, 48, 3), np.float32),
            "person_mask": ((BATCH_SIZE, 64 // downsample, 48 // downsample, 1), np.float32),
            "text_ids": ((BATCH_SIZE, 77), np.int32),
            "styles": ((BATCH_SIZE, 9, clip_size, clip_size, 3), np.float32),
            "style_present": ((BATCH_SIZE, 9), np.bool_),
            "pose": ((BATCH_SIZE, 85), np.float32),
        }
        assert -1 <= batch["image"].min() < batch["image"].max() <= 1
        assert set(np.unique(batch["person_mask"])) == {-1.0, 1.0}
        assert (batch["text_ids"][:, 0] == CLIP_BOS).all() and CLIP_BOS == tokenizer.bos_token_id
        for row, index in enumerate(indices):
            pair_id = source[int(index)]["id"].decode()  # "train/<source example>-><target example>"
            source_index, target_index = (int(n) for n in pair_id.split("/")[1].split("->"))
            person, target = make_example(source_index, "train"), make_example(target_index, "train")
            np.testing.assert_array_equal(batch["text_ids"][row], tokenize(tokenizer, target["text"])[0])
            np.testing.assert_allclose(batch["image"][row], target["image"] / 127.5 - 1, atol=1e-6)
            np.testing.assert_allclose(batch["source_image"][row], person["image"] / 127.5 - 1, atol=1e-6)
            mask = Image.fromarray(target["mask"].astype(np.uint8) * 255).resize(
                (48 // downsample, 64 // downsample), Image.Resampling.NEAREST)
            np.testing.assert_array_equal(batch["person_mask"][row, ..., 0], np.where(np.asarray(mask) > 0, 1, -1))
            np.testing.assert_array_equal(batch["styles"][row],
                                          [clip_preprocess(crop, clip_size) for crop in person["styles"]])
            np.testing.assert_array_equal(batch["style_present"][row], person["style_present"])
            np.testing.assert_array_equal(batch["pose"][row], target["smpl"])
        seen.extend(int(index) for index in indices)
    assert sorted(seen) == list(range(NUM_PAIRS))  # one epoch visits every record once
