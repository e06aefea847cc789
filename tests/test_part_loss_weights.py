"""Part loss weights (config data.part_loss_weights, the original's data option `loss_weight`): the
renderer's weight map against the eval's independent part layout, its pooling to latent size against
a hand-written block mean, and the diffusion stage trained with them."""
import numpy as np
import pytest

from conftest import jax_compilation_cache
from test_train import read_metrics, small_config
from upgpt_jax.data.synthetic import identity_from_id, make_example, part_weight_map
from upgpt_jax.data.transforms import latent_loss_weights
from upgpt_jax.eval.synthetic import target_layout
from upgpt_jax.train import trainer
from upgpt_jax.train.data import SyntheticPairs, training_pipeline, training_source


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """The weighted runs compile one train step between them (the same program, other weights)."""
    with jax_compilation_cache(tmp_path_factory.mktemp("jax_cache")) as folder:
        yield folder


def example_showing(parts):
    """The first train example whose pose shows every one of `parts` (fully covered pixels)."""
    for index in range(50):
        example = make_example(index, "train")
        identity = identity_from_id(int(example["identity"]))
        layout = target_layout(identity, example["smpl"])
        if all(part in layout.part_pixels for part in parts):
            return example, identity, layout
    raise AssertionError(f"no example among the first 50 shows {parts}")


def test_the_named_parts_get_their_weight_and_everything_else_one():
    example, identity, layout = example_showing(("hair", "top", "shoes"))
    weights = part_weight_map(identity, example["smpl"], {"hair": 11.0, "shoes": 4.0})
    assert weights.shape == example["image"].shape[:2] + (1,) and weights.dtype == np.float32
    weights = weights[..., 0]
    assert np.all(weights[layout.part_pixels["hair"]] == 11.0)
    assert np.all(weights[layout.part_pixels["shoes"]] == 4.0)
    assert np.all(weights[layout.part_pixels["top"]] == 1.0)
    assert np.all(weights[~example["mask"]] == 1.0)  # the background, wherever the person does not touch
    assert set(np.unique(weights)) == {1.0, 4.0, 11.0}
    # "skin" is the bare arms, legs and neck; with the face it is the eval's skin (its `skin` part).
    skin = part_weight_map(identity, example["smpl"], {"face": 3.0, "skin": 3.0})[..., 0]
    assert np.all(skin[layout.part_pixels["skin"]] == 3.0) and np.all(skin[layout.part_pixels["hair"]] == 1.0)


def test_unknown_part_names_are_refused_with_the_known_ones():
    example, identity, _ = example_showing(("hair",))
    with pytest.raises(ValueError, match=r"unknown parts \['head'\].*'hair'"):
        part_weight_map(identity, example["smpl"], {"head": 5.0})
    with pytest.raises(ValueError, match="unknown parts"):
        SyntheticPairs(4, (64, 48), 32, part_loss_weights={"background": 2.0})


def test_latent_weights_are_block_means_divided_by_each_example_mean():
    rng = np.random.default_rng(0)
    weights = rng.uniform(1.0, 12.0, (2, 8, 6, 1)).astype(np.float32)
    pooled = latent_loss_weights(weights, (4, 3))
    expected = np.zeros((2, 4, 3, 1))
    for b in range(2):
        for i in range(4):
            for j in range(3):
                expected[b, i, j, 0] = np.mean(weights[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 0], dtype=np.float64)
        expected[b] /= expected[b].mean()
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"cannot be pooled to the latent size \(3, 3\)"):
        latent_loss_weights(weights, (3, 3))


def test_weights_need_rendered_part_maps():
    config = small_config()
    config.data.part_loss_weights = {"hair": 11.0}
    config.data.data_dir = "/nonexistent/tfds"
    with pytest.raises(ValueError, match="part_loss_weights.*only synthetic_people rendered in memory"):
        training_source(config.data, config.model)
    config.data.data_dir, config.data.features_dir = "", "/nonexistent/features"
    with pytest.raises(ValueError, match="part_loss_weights.*precomputed features"):
        training_pipeline(config)


def test_the_diffusion_stage_trains_on_the_weights(tmp_path):
    """The batches carry each record's map pooled to latent size; weights of one leave the loss as it
    was, and heavy hair and face weights change it."""
    config = small_config(num_steps=2)
    config.data.part_loss_weights = {"hair": 30.0, "face": 30.0}
    pipeline = training_pipeline(config)
    batch = next(iter(pipeline))
    source = training_source(config.data, config.model)
    records = [source[index] for index in range(len(source))]
    maps = np.stack([part_weight_map(identity_from_id(int(record["identity"])), record["smpl"],
                                     {"hair": 30.0, "face": 30.0}) for record in records])
    latent = batch["person_mask"].shape[1:3]
    assert batch["loss_weights"].shape == (config.train.batch_size,) + latent + (1,)
    np.testing.assert_allclose(batch["loss_weights"].mean(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    pooled = latent_loss_weights(maps, latent)
    for weights in batch["loss_weights"]:  # each example's weights are some record's map, pooled
        assert min(np.abs(candidate - weights).max() for candidate in pooled) < 1e-6

    heavy = trainer.train(config, tmp_path / "heavy")
    config.data.part_loss_weights = {"hair": 1.0}
    ones = trainer.train(config, tmp_path / "ones")
    config.data.part_loss_weights = {}
    plain = trainer.train(config, tmp_path / "plain")
    assert heavy.stop_reason == ones.stop_reason == plain.stop_reason == "done"
    losses = {name: [row["loss"] for row in read_metrics(tmp_path / name)] for name in ("heavy", "ones", "plain")}
    np.testing.assert_allclose(losses["ones"], losses["plain"], rtol=1e-5)
    assert abs(losses["heavy"][0] - losses["plain"][0]) > 1e-3 * losses["plain"][0]
