"""Input pipeline: order, host sharding, resume, transforms, features mode, global batches on 8 devices."""
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from upgpt_jax.data.order import epoch_order
from upgpt_jax.data.pipeline import InputPipeline
from upgpt_jax.data.schema import check_record
from upgpt_jax.data.transforms import (
    FEATURE_RECORD_KEYS, FeatureTransform, PixelTransform, mask_to_latent, nearest_resize,
    pixel_transform_from_config, styles_to_clip,
)
from upgpt_jax.models.clip import clip_preprocess
from upgpt_jax.sharding import mesh_shape
from upgpt_jax.tokenizer import load_clip_tokenizer, tokenize

IMAGE_SIZE, STYLE_SIZE = (64, 48), 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_record(identity_id: int) -> dict:
    """A schema record (pose-transfer pair) from the synthetic generator, as a data source returns it."""
    from upgpt_jax.data.synthetic import make_pair

    pair = make_pair(identity_id, image_size=IMAGE_SIZE, style_size=STYLE_SIZE)
    source, target = pair["source"], pair["target"]
    record = {
        "image": target["image"],
        "mask": (target["mask"][..., None] * np.uint8(255)).astype(np.uint8),
        "smpl": target["smpl"],
        "text": target["text"].encode("utf-8"),  # TFDS returns Text as bytes
        "styles": source["styles"],
        "style_present": source["style_present"],
        "source_image": source["image"],
        "source_smpl": source["smpl"],
        "id": f"{identity_id}:source->{identity_id}:target",
        "identity": np.int64(identity_id),
    }
    check_record(record, IMAGE_SIZE, STYLE_SIZE, f"synthetic pair {identity_id}")
    return record


@pytest.fixture(scope="module")
def records():
    return [synthetic_record(i) for i in range(6)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def index_source(n: int) -> list[dict]:
    return [{"index": np.int64(i)} for i in range(n)]


def gather_indices(records):
    return {"index": np.array([record["index"] for record in records])}


def index_pipeline(n=23, batch=4, **kwargs):
    return InputPipeline(index_source(n), batch, gather_indices, **kwargs)


def take(pipeline, count):
    return [next(pipeline)["index"] for _ in range(count)]


# -- order -------------------------------------------------------------------------------------------
def test_epoch_order_is_a_seeded_permutation_that_changes_each_epoch():
    first = epoch_order(100, seed=3, epoch=0)
    np.testing.assert_array_equal(np.sort(first), np.arange(100))
    np.testing.assert_array_equal(first, epoch_order(100, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_order(100, seed=3, epoch=1))
    assert not np.array_equal(first, epoch_order(100, seed=4, epoch=0))
    np.testing.assert_array_equal(epoch_order(100, seed=3, epoch=0, shuffle=False), np.arange(100))


def test_an_epoch_visits_distinct_records_and_drops_the_remainder():
    pipeline = index_pipeline(n=23, batch=4, seed=1, prefetch=0)
    epoch = np.concatenate(take(pipeline, 5))  # 23 // 4 = 5 batches
    assert len(set(epoch.tolist())) == 20
    np.testing.assert_array_equal(epoch, epoch_order(23, 1, 0)[:20])
    assert pipeline.get_state() == {"seed": 1, "epoch": 1, "position": 0}
    np.testing.assert_array_equal(next(pipeline)["index"], epoch_order(23, 1, 1)[:4])


def test_iteration_is_deterministic_and_prefetch_does_not_change_it():
    plain = take(index_pipeline(seed=7, prefetch=0), 12)
    with index_pipeline(seed=7, prefetch=3) as prefetched:
        np.testing.assert_array_equal(np.stack(take(prefetched, 12)), np.stack(plain))
    assert not np.array_equal(np.stack(take(index_pipeline(seed=8, prefetch=0), 12)), np.stack(plain))


def test_num_epochs_ends_iteration():
    batches = list(index_pipeline(n=10, batch=4, num_epochs=2, prefetch=2))
    assert len(batches) == 4


def test_hosts_read_disjoint_slices_that_make_up_the_global_batch():
    single = index_pipeline(n=37, batch=8, seed=5, process_index=0, process_count=1, prefetch=0)
    hosts = [index_pipeline(n=37, batch=8, seed=5, process_index=p, process_count=2, prefetch=0) for p in (0, 1)]
    assert hosts[0].local_batch_size == 4
    for _ in range(9):  # 4 batches per epoch: crosses two epoch boundaries
        shares = [next(host)["index"] for host in hosts]
        assert not set(shares[0]) & set(shares[1])
        np.testing.assert_array_equal(np.concatenate(shares), next(single)["index"])


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("consumed", [2, 5, 6])  # mid-epoch, last batch of the epoch, just after it
def test_resume_from_saved_state_gives_the_next_batch(prefetch, consumed):
    uninterrupted = index_pipeline(n=26, batch=4, seed=11, prefetch=prefetch)  # 6 batches per epoch
    take(uninterrupted, consumed)
    saved = json.loads(json.dumps(uninterrupted.get_state()))
    expected = take(uninterrupted, 4)
    uninterrupted.close()

    resumed = index_pipeline(n=26, batch=4, seed=0, prefetch=prefetch)  # the state's seed wins
    take(resumed, 1)  # a restore also discards whatever was prefetched
    resumed.set_state(saved)
    np.testing.assert_array_equal(np.stack(take(resumed, 4)), np.stack(expected))
    resumed.close()


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="multiple of the process count 4"):
        index_pipeline(batch=6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        index_pipeline(n=3, batch=4)
    with pytest.raises(ValueError, match="process_index 2"):
        index_pipeline(process_index=2, process_count=2)
    pipeline = index_pipeline(n=23, batch=4)
    with pytest.raises(ValueError, match="keys"):
        pipeline.set_state({"epoch": 0, "position": 0})
    with pytest.raises(ValueError, match="out of range"):
        pipeline.set_state({"seed": 0, "epoch": 0, "position": 5})


def test_mesh_shape_fills_the_auto_axis_and_rejects_bad_sizes():
    assert mesh_shape({"data": -1, "fsdp": 4, "tensor": 1}, 8) == (2, 4, 1)
    assert mesh_shape({"data": 2, "fsdp": 4, "tensor": 1}, 8) == (2, 4, 1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        mesh_shape({"data": 2, "fsdp": 3, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        mesh_shape({"batch": 8}, 8)


# -- transforms --------------------------------------------------------------------------------------
def test_pixel_transform_matches_the_references(records, tokenizer, tiny_config):
    transform = pixel_transform_from_config(tiny_config.model, tokenizer, include_source_image=True)
    downsample = 2 ** (len(tiny_config.model.vae.channel_mult) - 1)
    latent_size = (64 // downsample, 48 // downsample)
    assert transform.latent_size == latent_size and transform.clip_image_size == tiny_config.model.clip.image_size
    batch = transform(records)
    count = len(records)

    image = np.stack([r["image"] for r in records]).astype(np.float64) / 255 * 2 - 1
    np.testing.assert_allclose(batch["image"], image, atol=1e-6)
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (count, 64, 48, 3)
    np.testing.assert_allclose(batch["source_image"], np.stack([r["source_image"] for r in records]) / 127.5 - 1,
                               atol=1e-6)

    texts = [r["text"].decode("utf-8") for r in records]
    np.testing.assert_array_equal(batch["text_ids"], tokenize(tokenizer, texts, 77))
    assert batch["text_ids"].dtype == np.int32 and batch["text_ids"].shape == (count, 77)

    styles = np.stack([[clip_preprocess(crop, 32) for crop in r["styles"]] for r in records])
    np.testing.assert_array_equal(batch["styles"], styles)
    assert batch["styles"].shape == (count, 9, 32, 32, 3)
    np.testing.assert_array_equal(batch["style_present"], np.stack([r["style_present"] for r in records]))
    assert batch["style_present"].dtype == np.bool_
    np.testing.assert_array_equal(batch["pose"], np.stack([r["smpl"] for r in records]))
    assert batch["pose"].dtype == np.float32 and batch["pose"].shape == (count, 85)
    assert batch["person_mask"].shape == (count, *latent_size, 1)


def test_long_texts_are_truncated_to_77_tokens_ending_with_eos(records, tokenizer):
    long_record = dict(records[0], text=("a person in a red striped top " * 30).encode())
    ids = PixelTransform(tokenizer, (8, 6), 32)([long_record])["text_ids"]
    assert ids.shape == (1, 77) and ids[0, 0] == tokenizer.bos_token_id and ids[0, -1] == tokenizer.eos_token_id


def test_styles_are_resized_like_clip_preprocess_when_sizes_differ(records):
    styles = np.stack([r["styles"] for r in records[:2]])
    resized = styles_to_clip(styles, 24)
    expected = np.stack([[clip_preprocess(crop, 24) for crop in crops] for crops in styles])
    assert resized.shape == (2, 9, 24, 24, 3)
    np.testing.assert_array_equal(resized, expected)


@pytest.mark.parametrize("size,latent", [((64, 48), (8, 6)), ((50, 37), (8, 6)), ((20, 12), (32, 24))])
def test_nearest_resize_picks_the_pixels_pil_picks(size, latent):
    masks = np.random.default_rng(0).integers(0, 256, (3,) + size + (1,), dtype=np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(m[..., 0]).resize(latent[::-1], Image.Resampling.NEAREST))
                         for m in masks])[..., None]
    np.testing.assert_array_equal(nearest_resize(masks, latent), expected)


def test_mask_values_default_and_original_quirk(records):
    masks = np.stack([r["mask"] for r in records])
    inside = nearest_resize(masks, (8, 6)) > 0
    assert inside.any() and not inside.all()
    default = mask_to_latent(masks, (8, 6))
    quirk = mask_to_latent(masks, (8, 6), original_mask_quirk=True)
    assert default.dtype == quirk.dtype == np.float32
    assert set(np.unique(default).tolist()) == {-1.0, 1.0}
    # The original: a 0/1 uint8 mask image, ToTensor (/255), then x * 2 - 1.
    original_inside = np.float32(np.float32(1) / np.float32(255) * 2 - 1)
    assert set(np.unique(quirk).tolist()) == {-1.0, float(original_inside)}
    assert abs(float(original_inside) - (-0.99216)) < 1e-5
    np.testing.assert_array_equal(default == 1.0, inside)
    np.testing.assert_array_equal(quirk == original_inside, inside)


def feature_record(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "latent_moments": rng.standard_normal((8, 6, 8)).astype(np.float32),
        "text_embedding": rng.standard_normal((77, 16)).astype(np.float32),
        "style_embedding": rng.standard_normal((9, 16)).astype(np.float32),
        "mask": (rng.random((64, 48, 1)) > 0.5).astype(np.uint8) * 255,
        "smpl": rng.standard_normal(85).astype(np.float32),
        "style_present": rng.random(9) > 0.3,
    }


def test_features_mode_passes_features_through():
    source = [feature_record(i) for i in range(5)]
    pipeline = InputPipeline(source, 4, FeatureTransform(original_mask_quirk=True), shuffle=False, prefetch=0)
    batch = next(pipeline)
    for key in ("latent_moments", "text_embedding", "style_embedding"):
        np.testing.assert_array_equal(batch[key], np.stack([r[key] for r in source[:4]]))
    np.testing.assert_array_equal(batch["pose"], np.stack([r["smpl"] for r in source[:4]]))
    np.testing.assert_array_equal(batch["style_present"], np.stack([r["style_present"] for r in source[:4]]))
    np.testing.assert_array_equal(batch["person_mask"],
                                  mask_to_latent(np.stack([r["mask"] for r in source[:4]]), (8, 6), True))
    with pytest.raises(KeyError, match="text_embedding"):
        FeatureTransform()([{k: v for k, v in source[0].items() if k != "text_embedding"}])
    assert set(FEATURE_RECORD_KEYS) == set(source[0])


# -- global batches on 8 fake CPU devices (a subprocess, so this process keeps one device) -----------
GLOBAL_BATCH_SCRIPT = textwrap.dedent("""
    import jax
    from jax.sharding import PartitionSpec
    from upgpt_jax.config_base import DEFAULT_AXIS_RULES
    from upgpt_jax.data.pipeline import InputPipeline, global_batches, make_global_batch
    from upgpt_jax.data.transforms import FeatureTransform
    from upgpt_jax.sharding import make_mesh

    assert jax.device_count() == 8, jax.devices()
    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    pipeline = InputPipeline([feature_record(i) for i in range(20)], 16, FeatureTransform(), seed=2, prefetch=0)
    expected = InputPipeline([feature_record(i) for i in range(20)], 16, FeatureTransform(), seed=2, prefetch=0)
    batch = next(global_batches(pipeline, mesh, DEFAULT_AXIS_RULES))
    local = next(expected)
    assert batch["latent_moments"].shape == (16, 8, 6, 8), batch["latent_moments"].shape
    assert batch["text_embedding"].shape == (16, 77, 16)
    for name, array in batch.items():
        assert array.sharding.spec == PartitionSpec(("data", "fsdp")), (name, array.sharding.spec)
        np.testing.assert_array_equal(np.asarray(array), local[name])
        for data in range(2):
            for fsdp in range(4):
                device = mesh.devices[data, fsdp, 0]
                (shard,) = [s for s in array.addressable_shards if s.device == device]
                rows = slice((data * 4 + fsdp) * 2, (data * 4 + fsdp + 1) * 2)
                assert shard.data.shape[0] == 2, shard.data.shape
                np.testing.assert_array_equal(np.asarray(shard.data), local[name][rows])
    try:
        make_global_batch({"x": np.zeros((6, 3))}, mesh, DEFAULT_AXIS_RULES)
    except ValueError as error:
        assert "8 shards" in str(error), error
    else:
        raise AssertionError("6 rows over 8 shards must fail")
    print("OK")
""")


def test_global_batch_on_eight_fake_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = "import numpy as np\n" + inspect.getsource(feature_record) + GLOBAL_BATCH_SCRIPT
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout + result.stderr


def test_area_resized_masks_are_the_covered_fraction_of_each_block(records):
    """`resize="area"`: each latent pixel is -1 + 2 * (the share of its block the person covers, to 1/255),
    counted here pixel by pixel, i.e. PIL's BOX filter of the 0/1 mask; the quirk's inside value
    takes the place of +1."""
    masks = np.stack([r["mask"] for r in records])  # (B, 64, 48, 1) uint8, 0 or 255
    height, width = masks.shape[1:3]
    block = (height // 8, width // 6)
    covered = np.zeros((len(masks), 8, 6, 1))
    for row in range(height):
        for column in range(width):
            covered[:, row // block[0], column // block[1], 0] += masks[:, row, column, 0] > 0
    share = np.round(255 * covered / (block[0] * block[1])) / 255  # in steps of 1/255, as features store it
    assert 0 < np.mean((share > 0) & (share < 1))  # the silhouette's edge crosses some blocks
    box = np.stack([np.asarray(Image.fromarray((m[..., 0] > 0).astype(np.float32)).resize((6, 8), Image.Resampling.BOX))
                    for m in masks])[..., None]
    np.testing.assert_allclose(share, box, atol=0.5 / 255)
    np.testing.assert_allclose(mask_to_latent(masks, (8, 6), resize="area"), -1.0 + 2.0 * share, atol=1e-6)
    quirk_inside = float(np.float32(2.0 / 255.0 - 1.0))
    np.testing.assert_allclose(mask_to_latent(masks, (8, 6), original_mask_quirk=True, resize="area"),
                               -1.0 + (quirk_inside + 1.0) * share, atol=1e-6)
    with pytest.raises(ValueError, match=r"latent size \(7, 6\) to divide the mask size \(64, 48\)"):
        mask_to_latent(masks, (7, 6), resize="area")
    with pytest.raises(ValueError, match="person_mask_resize must be one of"):
        mask_to_latent(masks, (8, 6), resize="bilinear")
