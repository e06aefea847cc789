"""Frozen CLIP encoders as pure functions over a plain params pytree.

UPGPT conditions its UNet on three CLIP products (all from one CLIP ViT-L/14 model):

* content text  -> last hidden states of the text transformer, (B, 77, 768); this is what LDM's
  ``FrozenCLIPEmbedder`` feeds to cross-attention (HF ``CLIPTextModel(...).last_hidden_state``);
* style images  -> one pooled, projected, *un-normalised* image feature per body part
  (``CLIPModel.get_image_features`` / OpenAI ``encode_image``);
* style texts   -> a text standing in for a body part, as a pooled, projected, un-normalised text
  feature (``CLIPModel.get_text_features`` / OpenAI ``encode_text``).

The encoders are never trained, so their params live in an ordinary pytree beside the trainable
model (replicated, no logical axis names). The modules are transformers' own Flax CLIP modules;
the params tree uses their layout, so a Hugging Face checkpoint maps onto it unchanged:
``{"text_model", "vision_model", "text_projection", "visual_projection"}``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util
from PIL import Image
from transformers import CLIPConfig
from transformers.models.clip.modeling_flax_clip import FlaxCLIPTextTransformer, FlaxCLIPVisionTransformer

from upgpt_jax import storage
from upgpt_jax.weights.torch_params import check_flax_params, torch_to_flax_params
from upgpt_jax.weights.weight_files import find_weight_file, read_state_dict

PARAM_GROUPS = ("text_model", "vision_model", "text_projection", "visual_projection")

# Checkpoint files `load_clip` reads, the first present winning.
WEIGHT_FILES = (
    "flax_model.msgpack",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Weights of a CLIPModel checkpoint the encoders do not use: position-id buffers and the
# contrastive logit scale.
_UNUSED_WEIGHTS = ("position_ids", "logit_scale")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# `random_clip` keys for the real CLIP ViT-L/14 shapes (e.g. for jax.eval_shape / memory estimates).
VIT_L14 = dict(
    text_width=768, text_layers=12, text_heads=12,
    vision_width=1024, vision_layers=24, vision_heads=16,
    image_size=224, patch_size=14, projection_dim=768,
)


@dataclasses.dataclass(frozen=True, eq=False)
class ClipEncoders:
    """The linen modules of one CLIP model; their params live outside, in a dict keyed by PARAM_GROUPS.

    Hashable by identity: the encode functions take it as a static `jax.jit` argument (one
    compilation per instance and input shape), and they may also be called inside another jit.
    """

    config: CLIPConfig
    text_model: FlaxCLIPTextTransformer
    vision_model: FlaxCLIPVisionTransformer
    text_projection: nn.Dense
    visual_projection: nn.Dense


def build_clip_encoders(config: CLIPConfig, dtype: Any = jnp.float32) -> ClipEncoders:
    """Modules for `config`, computing in `dtype` (params keep their own dtype)."""

    def projection() -> nn.Dense:
        return nn.Dense(config.projection_dim, use_bias=False, dtype=dtype)

    return ClipEncoders(
        config=config,
        text_model=FlaxCLIPTextTransformer(config.text_config, dtype=dtype),
        vision_model=FlaxCLIPVisionTransformer(config.vision_config, dtype=dtype),
        text_projection=projection(),
        visual_projection=projection(),
    )


def clip_config(
    *,
    text_width: int,
    text_layers: int,
    text_heads: int,
    vision_width: int,
    vision_layers: int,
    vision_heads: int,
    image_size: int,
    patch_size: int,
    projection_dim: int,
    max_length: int = 77,
    vocab_size: int = 49408,
) -> CLIPConfig:
    """An OpenAI-style CLIPConfig (quick_gelu, MLP 4x width) from the project's flat config keys.

    The last two vocabulary ids are BOS and EOS, as in CLIP's tokenizer (49406, 49407).
    """
    text = dict(
        hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
        num_attention_heads=text_heads, max_position_embeddings=max_length, vocab_size=vocab_size,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, projection_dim=projection_dim,
        hidden_act="quick_gelu",
    )
    vision = dict(
        hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads, image_size=image_size, patch_size=patch_size,
        projection_dim=projection_dim, hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def clip_param_shapes(encoders: ClipEncoders) -> dict:
    """The params tree of `encoders` as jax.ShapeDtypeStructs, computing nothing (fine for ViT-L/14)."""
    text_config, vision_config = encoders.config.text_config, encoders.config.vision_config

    def init(rng: jax.Array) -> dict:
        ids = jnp.zeros((1, text_config.max_position_embeddings), jnp.int32)
        pixels = jnp.zeros((1, vision_config.image_size, vision_config.image_size, 3), jnp.float32)
        return {
            "text_model": encoders.text_model.init(rng, ids, jnp.ones_like(ids), _positions(ids))["params"],
            "vision_model": encoders.vision_model.init(rng, pixels)["params"],
            "text_projection": encoders.text_projection.init(rng, jnp.zeros((1, text_config.hidden_size)))["params"],
            "visual_projection": encoders.visual_projection.init(
                rng, jnp.zeros((1, vision_config.hidden_size)))["params"],
        }

    return jax.eval_shape(init, jax.random.PRNGKey(0))


def init_clip_params(encoders: ClipEncoders, seed: int = 0, param_dtype: Any = jnp.float32) -> dict:
    """Random params for `encoders`, in the layout `load_clip` returns.

    Drawn with numpy by leaf name (norm scales 1, biases 0, embeddings N(0, 0.02), kernels
    N(0, 1/fan_in)): flax's own init costs seconds of XLA compilation per model even when tiny.
    """
    rng = np.random.default_rng(seed)

    def draw(path: tuple[str, ...], leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name, shape = path[-1], leaf.shape
        if name == "scale":
            value = np.ones(shape)
        elif name == "bias":
            value = np.zeros(shape)
        elif name == "kernel":
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
        else:  # token, position and class embeddings
            value = rng.normal(0.0, 0.02, shape)
        return jnp.asarray(value, param_dtype)

    flat = traverse_util.flatten_dict(clip_param_shapes(encoders))
    return traverse_util.unflatten_dict({path: draw(path, leaf) for path, leaf in flat.items()})


def random_clip(
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    **keys: Any,
) -> tuple[ClipEncoders, dict]:
    """A randomly initialised CLIP (for the default run and tests, where no weights can be downloaded).

    `config` (a dict or ml_collections.ConfigDict) and `keys` hold `clip_config`'s keyword arguments;
    `keys` win.
    """
    if config is not None and hasattr(config, "to_dict"):
        config = config.to_dict()
    merged = {**(config or {}), **keys}
    expected = set(VIT_L14) | {"max_length", "vocab_size"}
    unknown, missing = set(merged) - expected, set(VIT_L14) - set(merged)
    if unknown or missing:
        raise ValueError(
            f"random_clip config: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
            f"expected {sorted(expected)}"
        )
    encoders = build_clip_encoders(clip_config(**merged), dtype)
    return encoders, init_clip_params(encoders, seed, param_dtype)


def load_clip(
    path: str | pathlib.Path, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
) -> tuple[ClipEncoders, dict]:
    """Encoders and params from a Hugging Face CLIPModel folder: a local path, or an object-store URL
    (gs://...) whose files are copied to a temporary folder first. Nothing comes from the Hub.

    Supported: a full CLIPModel folder (model_type "clip", e.g. a snapshot of
    openai/clip-vit-large-patch14) with config.json and one of WEIGHT_FILES (PyTorch weights are
    converted here; `.bin` files need torch). Not supported: text-only or vision-only folders (such
    as Stable Diffusion's `text_encoder`), since UPGPT needs both towers and both projections of one
    model. Weights that do not fit config.json raise `weights.torch_params.WeightConversionError`,
    as every importer does.
    """
    if storage.is_url(path):
        with storage.local_copy(path) as folder:
            return load_clip(folder, dtype, param_dtype)
    folder = pathlib.Path(path)
    expectation = (
        "expected a local Hugging Face CLIPModel folder (e.g. a snapshot of "
        f"openai/clip-vit-large-patch14) holding config.json and one of {', '.join(WEIGHT_FILES)}"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"CLIP model folder {folder} does not exist; {expectation}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; {expectation}")
    weight_file = find_weight_file(folder, WEIGHT_FILES)  # Its error is a FileNotFoundError.
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "clip":
        raise ValueError(
            f"{config_file} has model_type {model_type!r}, not 'clip': UPGPT needs a full CLIPModel "
            f"(text and vision towers with both projections); {expectation}"
        )

    encoders = build_clip_encoders(CLIPConfig.from_json_file(config_file), dtype)
    expected = clip_param_shapes(encoders)
    if weight_file.name == "flax_model.msgpack":
        flat = traverse_util.flatten_dict(serialization.msgpack_restore(weight_file.read_bytes()))
        flat = {key: value for key, value in flat.items() if key[-1] not in _UNUSED_WEIGHTS}
        check_flax_params(flat, expected, source=str(weight_file))
        params = traverse_util.unflatten_dict(flat)
    else:
        state = {
            name: tensor for name, tensor in read_state_dict(weight_file).items()
            if name.rpartition(".")[2] not in _UNUSED_WEIGHTS
        }
        params = torch_to_flax_params(state, expected, source=str(weight_file), key_to_path=_hf_flax_path)
    return encoders, _cast(params, param_dtype)


def clip_from_config(
    config: Mapping[str, Any], seed: int = 0, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
) -> tuple[ClipEncoders, dict]:
    """`config.model.clip`: the local CLIPModel folder at `path`, or random weights of the given
    shapes when `path` is empty (the embedded default and the tests)."""
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    path = config.pop("path", "")
    if path:
        return load_clip(path, dtype, param_dtype)
    return random_clip(config, seed, dtype, param_dtype)


@functools.partial(jax.jit, static_argnums=0)
def encode_text_tokens(encoders: ClipEncoders, params: dict, input_ids: jax.Array) -> jax.Array:
    """Content-text conditioning: last hidden states (B, L, text_width) of token ids (B, L).

    As FrozenCLIPEmbedder, no attention mask is applied (padding tokens attend causally too).
    """
    hidden, _ = _text_transformer(encoders, params, input_ids)
    return hidden


@functools.partial(jax.jit, static_argnums=0)
def encode_style_texts(encoders: ClipEncoders, params: dict, input_ids: jax.Array) -> jax.Array:
    """Style-text features (B, P, projection_dim): pooled at EOS, projected, un-normalised; ids (B, P, L)."""
    if input_ids.ndim != 3:
        raise ValueError(f"style text ids must be (batch, parts, length), got shape {input_ids.shape}")
    batch, parts, length = input_ids.shape
    _, pooled = _text_transformer(encoders, params, input_ids.reshape(batch * parts, length))
    features = encoders.text_projection.apply({"params": params["text_projection"]}, pooled)
    return features.reshape(batch, parts, -1)


@functools.partial(jax.jit, static_argnums=0)
def encode_style_images(encoders: ClipEncoders, params: dict, pixels: jax.Array) -> jax.Array:
    """Style-image features (B, P, projection_dim) of CLIP-normalised NHWC crops (B, P, S, S, 3).

    Pooled (class token after post-layernorm), projected, un-normalised: CLIPModel.get_image_features.
    """
    size = encoders.config.vision_config.image_size
    if pixels.ndim != 5 or pixels.shape[2:] != (size, size, 3):
        raise ValueError(f"style images must be (batch, parts, {size}, {size}, 3), got shape {pixels.shape}")
    if not jnp.issubdtype(pixels.dtype, jnp.floating):
        raise ValueError(f"style images must be CLIP-normalised floats (see clip_preprocess), got {pixels.dtype}")
    batch, parts = pixels.shape[:2]
    outputs = encoders.vision_model.apply(
        {"params": params["vision_model"]}, pixels.reshape((batch * parts,) + pixels.shape[2:]), deterministic=True
    )
    features = encoders.visual_projection.apply({"params": params["visual_projection"]}, outputs.pooler_output)
    return features.reshape(batch, parts, -1)


def clip_preprocess(image: np.ndarray | Image.Image, size: int = 224) -> np.ndarray:
    """CLIP's image transform, as transformers' CLIPImageProcessor: (size, size, 3) float32.

    Resize the shorter side to `size` with PIL bicubic, centre-crop, scale to [0, 1], normalise with
    CLIP's mean/std. An image already `size` x `size` (UPGPT's stored style crops) is only
    normalised; an all-black image gives UPGPT's "missing part" input.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    long = int(size * long / short)
    new_size = (size, long) if width <= height else (long, size)
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    top, left = (new_size[1] - size) // 2, (new_size[0] - size) // 2
    pixels = np.asarray(image, np.float64)[top:top + size, left:left + size] / 255.0
    return ((pixels - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(np.float32)


def _positions(input_ids: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1], dtype=jnp.int32), input_ids.shape)


def _text_transformer(encoders: ClipEncoders, params: dict, input_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    max_length = encoders.config.text_config.max_position_embeddings
    if input_ids.ndim != 2 or input_ids.shape[1] > max_length:
        raise ValueError(f"text ids must be (batch, length <= {max_length}), got shape {input_ids.shape}")
    input_ids = input_ids.astype(jnp.int32)
    outputs = encoders.text_model.apply(
        {"params": params["text_model"]}, input_ids, jnp.ones_like(input_ids), _positions(input_ids),
        deterministic=True,
    )
    return outputs.last_hidden_state, outputs.pooler_output


def _cast(params: dict, param_dtype: Any) -> dict:
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, param_dtype), params)


def _hf_flax_path(name: str) -> tuple[str, ...]:
    """A PyTorch CLIPModel key as a path of transformers' Flax CLIP params, whose leaf the generic
    rule then renames: Flax CLIP keeps list indices as keys of their own
    (`text_model.encoder.layers.0` -> text_model/encoder/layers/0), not joined as `name_N`."""
    return tuple(name.split("."))
