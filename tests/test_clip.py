"""The CLIP encoders against transformers' PyTorch CLIPModel, with tiny random weights loaded from disk."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import serialization
from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModel, FlaxCLIPModel

from upgpt_jax.weights.torch_params import WeightConversionError
from upgpt_jax.models import clip

TINY = dict(
    text_width=32, text_layers=2, text_heads=4,
    vision_width=32, vision_layers=2, vision_heads=4,
    image_size=32, patch_size=8, projection_dim=16, vocab_size=1000,
)
BOS, EOS = TINY["vocab_size"] - 2, TINY["vocab_size"] - 1


def _rel_err(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.abs(ours - reference).max() / np.abs(reference).max()


@pytest.fixture(scope="module")
def torch_clip():
    torch.manual_seed(0)
    return CLIPModel(clip.clip_config(**TINY)).eval()


@pytest.fixture(scope="module")
def clip_dir(torch_clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_safetensors")
    torch_clip.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def loaded(clip_dir):
    return clip.load_clip(clip_dir)


@pytest.fixture(scope="module")
def token_ids():
    """BOS, random tokens, EOS at different places, EOS padding (as the tokenizer pads)."""
    ids = np.random.RandomState(0).randint(0, BOS, size=(6, 77))
    ids[:, 0] = BOS
    for row, eos_at in enumerate([3, 10, 40, 76, 1, 20]):
        ids[row, eos_at:] = EOS
    return ids


def test_text_hidden_states_match_torch(torch_clip, loaded, token_ids):
    with torch.no_grad():
        reference = torch_clip.text_model(input_ids=torch.tensor(token_ids)).last_hidden_state.numpy()
    ours = clip.encode_text_tokens(*loaded, token_ids)
    assert ours.shape == (6, 77, TINY["text_width"])
    assert _rel_err(ours, reference) <= 1e-4


def test_style_text_features_match_torch(torch_clip, loaded, token_ids):
    with torch.no_grad():
        reference = torch_clip.get_text_features(input_ids=torch.tensor(token_ids)).numpy()
    ours = clip.encode_style_texts(*loaded, token_ids.reshape(2, 3, 77))
    assert ours.shape == (2, 3, TINY["projection_dim"])
    assert _rel_err(ours.reshape(6, -1), reference) <= 1e-4


def test_style_image_features_match_torch(torch_clip, loaded):
    torch.manual_seed(1)
    pixels = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        reference = torch_clip.get_image_features(pixel_values=pixels).numpy()
    nhwc = pixels.numpy().transpose(0, 2, 3, 1).reshape(2, 3, 32, 32, 3)
    ours = clip.encode_style_images(*loaded, nhwc)
    assert ours.shape == (2, 3, TINY["projection_dim"])
    assert _rel_err(ours.reshape(6, -1), reference) <= 1e-4


def test_params_use_transformers_flax_layout(torch_clip, loaded):
    """Same tree as FlaxCLIPModel's (less the contrastive logit_scale), so its msgpack files load as they are."""
    reference = FlaxCLIPModel(torch_clip.config, _do_init=False).params_shape_tree
    reference = {group: tree for group, tree in reference.items() if group != "logit_scale"}
    assert jax.tree.map(np.shape, loaded[1]) == jax.tree.map(np.shape, reference)


@pytest.mark.parametrize(
    "file_format",
    ["pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json", "flax_model.msgpack"],
)
def test_other_weight_files_give_the_same_params(torch_clip, loaded, tmp_path, file_format):
    _, expected = loaded
    if file_format.endswith(".index.json"):  # sharded
        torch_clip.save_pretrained(tmp_path, safe_serialization="safetensors" in file_format, max_shard_size="200KB")
    elif file_format == "pytorch_model.bin":
        torch_clip.save_pretrained(tmp_path, safe_serialization=False)
    else:
        torch_clip.config.save_pretrained(tmp_path)
        tree = {**jax.tree.map(np.asarray, expected), "logit_scale": np.float32(2.6592)}
        (tmp_path / file_format).write_bytes(serialization.msgpack_serialize(tree))
    assert (tmp_path / file_format).is_file()
    if file_format.endswith(".index.json"):
        assert len(set(json.loads((tmp_path / file_format).read_text())["weight_map"].values())) > 1
    _, params = clip.load_clip(tmp_path)
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_inside_jit_and_bfloat16(clip_dir, loaded, token_ids):
    encoders, params = loaded
    direct = clip.encode_text_tokens(encoders, params, token_ids)
    inside = jax.jit(functools.partial(clip.encode_text_tokens, encoders))(params, token_ids)
    assert _rel_err(inside, direct) <= 1e-5

    bf16_encoders, bf16_params = clip.load_clip(clip_dir, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_params)} == {jnp.dtype(jnp.bfloat16)}
    bf16 = clip.encode_text_tokens(bf16_encoders, bf16_params, token_ids)
    assert bf16.dtype == jnp.bfloat16
    assert _rel_err(bf16, direct) <= 5e-2


def test_random_clip_has_the_loaded_layout(loaded):
    config = ml_collections.ConfigDict({k: v for k, v in TINY.items() if k != "projection_dim"})
    encoders, params = clip.random_clip(config, seed=3, projection_dim=TINY["projection_dim"])
    shapes = lambda tree: jax.tree.map(np.shape, tree)  # noqa: E731
    assert shapes(params) == shapes(loaded[1])
    pixels = jnp.zeros((1, 9, 32, 32, 3))
    features = clip.encode_style_images(encoders, params, pixels)
    assert features.shape == (1, 9, TINY["projection_dim"]) and bool(jnp.all(jnp.isfinite(features)))
    other = clip.random_clip(config, seed=4, projection_dim=TINY["projection_dim"])[1]
    assert not np.array_equal(params["text_projection"]["kernel"], other["text_projection"]["kernel"])
    with pytest.raises(ValueError, match=r"unknown keys \['text_depth'\].*missing keys \['projection_dim'\]"):
        clip.random_clip(config, text_depth=2)


def test_bad_inputs_are_named(loaded):
    encoders, params = loaded
    with pytest.raises(ValueError, match=r"\(batch, parts, 32, 32, 3\)"):
        clip.encode_style_images(encoders, params, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="length <= 77"):
        clip.encode_text_tokens(encoders, params, np.zeros((1, 78), np.int32))


def test_load_errors_name_the_problem(torch_clip, clip_dir, loaded, tmp_path):
    missing = tmp_path / "no_such_clip"
    with pytest.raises(FileNotFoundError, match=r"no_such_clip does not exist.*config\.json.*model\.safetensors"):
        clip.load_clip(missing)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(clip_dir / "config.json", no_weights)
    with pytest.raises(FileNotFoundError, match=r"no weight file in .*no_weights.*pytorch_model\.bin"):
        clip.load_clip(no_weights)

    text_only = tmp_path / "text_only"
    CLIPTextModel(torch_clip.config.text_config).save_pretrained(text_only)
    with pytest.raises(ValueError, match="model_type 'clip_text_model', not 'clip'"):
        clip.load_clip(text_only)

    mismatched = tmp_path / "mismatched"
    shutil.copytree(clip_dir, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["projection_dim"] = 8
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightConversionError) as raised:
        clip.load_clip(mismatched)
    message = str(raised.value)
    assert f"weights from {mismatched / 'model.safetensors'} do not match" in message
    assert "text_projection.weight -> text_projection/kernel: got (32, 16), expected (32, 8)" in message
    assert sorted(line.split(" -> ")[0] for line in raised.value.misshaped) == [
        "text_projection.weight", "visual_projection.weight"
    ]

    msgpack = tmp_path / "msgpack"
    torch_clip.config.save_pretrained(msgpack)
    tree = jax.tree.map(np.asarray, loaded[1])
    tree["text_model"]["final_layer_norm"]["extra"] = np.zeros(3, np.float32)
    del tree["visual_projection"]
    (msgpack / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    with pytest.raises(WeightConversionError) as raised:
        clip.load_clip(msgpack)
    assert str(msgpack / "flax_model.msgpack") in str(raised.value)
    assert raised.value.missing == ["visual_projection/kernel (32, 16)"]
    assert raised.value.unexpected == ["text_model/final_layer_norm/extra (3,)"]


@pytest.mark.parametrize("height, width, size", [(300, 257, 224), (224, 224, 224), (181, 410, 224), (50, 45, 32)])
def test_clip_preprocess_matches_clip_image_processor(height, width, size):
    rng = np.random.RandomState(height + width)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1.0, height)[:, None, None]
    image = np.clip(ramp + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    reference = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = clip.clip_preprocess(image, size=size)
    assert ours.shape == (size, size, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
