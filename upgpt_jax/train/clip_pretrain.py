"""Contrastive pre-training of a small CLIP on the synthetic people, before the diffusion stage.

  python -m upgpt_jax.train.clip_pretrain --config configs/synthetic_tiny.py --out DIR
      [--config.clip_pretrain.num_steps=300 ...]
  python train.py --config configs/synthetic_tiny.py --workdir W --config.model.clip.path=DIR ...

Why: UPGPT conditions its UNet on a pretrained CLIP ViT-L/14, in whose one embedding space "a red
top" and the crop of a red top lie close: that is what lets a style text stand in for a part's
crop (the edit task) and what makes the crops' colours easy to read. The embedded default cannot
download CLIP, and a random tiny CLIP gives embeddings that barely differ between people and
unrelated spaces for texts and crops. This trains the tiny CLIP as CLIP was trained, with the
symmetric InfoNCE loss over two kinds of pairs of the synthetic train split:
- (style crop of a part, its part text: "a red top", "blonde hair"; `describe_part`): the vision
  tower, both projections and the text tower's pooled output;
- (the whole image, its content text): the text tower on whole sentences, whose token states the
  UNet attends to.
A batch holds many pairs with one text (11 colours of a top), so each row's target spreads evenly
over the columns with its text (`multi_positive_clip_loss`), not over the diagonal alone.

The output is a Hugging Face CLIPModel folder (config.json, flax_model.msgpack with the logit
scale) that `models.clip.load_clip` reads, plus pretrain.json: the settings, the loss curve and the
held-out retrieval accuracies (test identities' crops -> part texts, images -> content texts).
The model is small: it trains on one device, the texts cut to `text_length` tokens (CLIP's text
tower is causal and pools at EOS, so the states of a text that fits are those of its full length).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization
from PIL import Image
from transformers import CLIPConfig

from upgpt_jax import storage
from upgpt_jax.cli_errors import BadInput
from upgpt_jax.data.synthetic import generate, identity_from_id
from upgpt_jax.data.synthetic.identity import PART_COLOUR_FIELDS, describe_part
from upgpt_jax.data.synthetic.mannequin import PART_INDEX
from upgpt_jax.data.transforms import styles_to_clip
from upgpt_jax.models.clip import ClipEncoders, clip_from_config, encode_style_images, encode_style_texts
from upgpt_jax.tokenizer import load_clip_tokenizer, tokenize

TEXT_PARTS = tuple(PART_COLOUR_FIELDS)  # the parts with a style text of their own
REPORT_FILE = "pretrain.json"
CROP_KEYS = ("crops", "crop_labels", "part_text_ids")  # a step's arrays indexed by crop (the rest: by image)


class ContrastivePairs:
    """The synthetic split's pairs as arrays: CLIP-normalised `crops` / `images` (N, S, S, 3) with
    `crop_labels` / `image_labels` (N,) indexing the unique `part_texts` / `texts`."""

    def __init__(self, split: str, num_examples: int, image_size: tuple[int, int], clip_size: int, seed: int):
        crops, part_texts, images, texts = [], [], [], []
        for example in generate(num_examples, split, image_size=image_size, style_size=clip_size, seed=seed):
            identity = identity_from_id(int(example["identity"]), seed)
            for part in TEXT_PARTS:
                if example["style_present"][PART_INDEX[part]]:
                    crops.append(example["styles"][PART_INDEX[part]])
                    part_texts.append(describe_part(identity, part))
            images.append(square_on_background(example["image"], identity.background, clip_size))
            texts.append(str(example["text"]))
        self.crops = styles_to_clip(np.stack(crops)[None], clip_size)[0]
        self.images = styles_to_clip(np.stack(images)[None], clip_size)[0]
        self.part_texts, self.crop_labels = np.unique(part_texts, return_inverse=True)
        self.texts, self.image_labels = np.unique(texts, return_inverse=True)


def square_on_background(image: np.ndarray, background: Sequence[int], size: int) -> np.ndarray:
    """`image` (H, W, 3) uint8 centred on a square of its background colour, resized to `size`: the
    whole person, where CLIP's centre crop of the short side would cut off head and feet."""
    height, width = image.shape[:2]
    side = max(height, width)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = np.asarray(background, np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top:top + height, left:left + width] = image
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BICUBIC))


def multi_positive_clip_loss(first: jax.Array, second: jax.Array, first_labels: jax.Array,
                             second_labels: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """CLIP's symmetric InfoNCE of embeddings `first` (N, D) against `second` (M, D), where row i
    and column j are a positive pair when their labels are equal: each row's (and column's)
    target is uniform over its positives. Every row and column must have one."""
    first = first / jnp.linalg.norm(first, axis=-1, keepdims=True)
    second = second / jnp.linalg.norm(second, axis=-1, keepdims=True)
    logits = logit_scale * first @ second.T
    positive = (first_labels[:, None] == second_labels[None, :]).astype(logits.dtype)
    rows = optax.softmax_cross_entropy(logits, positive / positive.sum(1, keepdims=True))
    columns = optax.softmax_cross_entropy(logits.T, positive.T / positive.sum(0)[:, None])
    return (rows.mean() + columns.mean()) / 2


def image_features(clip: ClipEncoders, params: Any, pixels: jax.Array) -> jax.Array:
    """Projected image features (N, D) of CLIP-normalised images (N, S, S, 3), as a style crop's."""
    return encode_style_images(clip, params, pixels[:, None])[:, 0]


def text_features(clip: ClipEncoders, params: Any, ids: jax.Array) -> jax.Array:
    """Projected text features (N, D) of token ids (N, L), as a style text's."""
    return encode_style_texts(clip, params, ids[:, None])[:, 0]


def make_step(clip: ClipEncoders, optimizer: optax.GradientTransformation):
    """jitted (state, opt_state, pairs, crop_rows, image_rows) -> (state, opt_state, losses): one step on
    the rows `crop_rows` / `image_rows` of `pairs` (the training arrays, placed on the device once);
    `state` is (params, log scale)."""

    def losses(state: tuple[Any, jax.Array], batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        params, log_scale = state
        scale = jnp.exp(log_scale)
        part = multi_positive_clip_loss(
            image_features(clip, params, batch["crops"]),
            text_features(clip, params, batch["part_text_ids"]), batch["crop_labels"], batch["crop_labels"], scale)
        image = multi_positive_clip_loss(
            image_features(clip, params, batch["images"]),
            text_features(clip, params, batch["text_ids"]), batch["image_labels"], batch["image_labels"], scale)
        return part + image, {"part": part, "image": image}

    @jax.jit
    def step(state, opt_state, pairs, crop_rows, image_rows):
        batch = {key: value[crop_rows if key in CROP_KEYS else image_rows] for key, value in pairs.items()}
        (loss, parts), grads = jax.value_and_grad(losses, has_aux=True)(state, batch)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, {"loss": loss, **parts}

    return step


def retrieval_accuracy(clip: ClipEncoders, params: Any, pixels: np.ndarray, labels: np.ndarray,
                       text_ids: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of picking each image's own text among all `text_ids` by cosine similarity."""
    images = np.concatenate([np.asarray(image_features(clip, params, pixels[i:i + batch_size]))
                             for i in range(0, len(pixels), batch_size)])
    texts = np.array(text_features(clip, params, text_ids))
    images /= np.linalg.norm(images, axis=-1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=-1, keepdims=True)
    return float(np.mean(np.argmax(images @ texts.T, axis=1) == labels))


def pretrain_clip(config: ml_collections.ConfigDict, out: str) -> dict[str, Any]:
    """Train `config.model.clip`'s shapes from `config.seed`'s random weights on `config.clip_pretrain`
    and write the CLIPModel folder `out` (local or gs://); returns the report written beside it."""
    settings, model = config.clip_pretrain, config.model
    if model.clip.get("path"):
        raise BadInput(f"model.clip.path is {model.clip.path!r}: clip_pretrain trains the random CLIP of "
                         "model.clip's shapes; leave the path empty")
    if config.data.dataset != "synthetic_people" or config.data.data_dir:
        raise BadInput("clip_pretrain trains on the synthetic people rendered in memory (data.dataset "
                         f"'synthetic_people', no data.data_dir), got {config.data.dataset!r} in {config.data.data_dir!r}")
    if not 0 <= settings.warmup_steps < settings.num_steps:
        raise BadInput(f"clip_pretrain.warmup_steps must be in [0, num_steps={settings.num_steps}), "
                       f"got {settings.warmup_steps}")
    storage.check_writable(out)
    started = time.perf_counter()
    tokenizer = load_clip_tokenizer()
    ids = lambda texts: cut_text_ids(tokenize(tokenizer, list(texts)), settings.text_length)
    train = ContrastivePairs("train", settings.num_examples, tuple(model.image_size), model.clip.image_size, config.seed)
    test = ContrastivePairs("test", settings.num_test_examples, tuple(model.image_size), model.clip.image_size,
                            config.seed)
    part_text_ids, text_ids = ids(train.part_texts), ids(train.texts)
    pairs = jax.device_put({
        "crops": train.crops, "crop_labels": train.crop_labels, "part_text_ids": part_text_ids[train.crop_labels],
        "images": train.images, "image_labels": train.image_labels, "text_ids": text_ids[train.image_labels],
    })
    print(f"clip_pretrain: {len(train.crops)} crop pairs ({len(train.part_texts)} part texts) and "
          f"{len(train.images)} image pairs rendered in {time.perf_counter() - started:.1f} s", flush=True)

    clip, params = clip_from_config(model.clip, seed=config.seed)  # random: the path is empty
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, settings.warmup_steps,
                                                  settings.num_steps, settings.learning_rate * 0.1)
    optimizer = optax.adamw(schedule, weight_decay=settings.weight_decay)
    state = (params, jnp.log(1.0 / settings.temperature))
    opt_state = optimizer.init(state)
    step = make_step(clip, optimizer)
    rng = np.random.default_rng([config.seed, 7])
    curve = []
    for index in range(settings.num_steps):
        crop_rows = rng.integers(len(train.crops), size=settings.batch_size * settings.crops_per_image)
        image_rows = rng.integers(len(train.images), size=settings.batch_size)
        state, opt_state, losses = step(state, opt_state, pairs, crop_rows, image_rows)
        if (index + 1) % settings.log_every == 0 or index + 1 == settings.num_steps:
            curve.append({"step": index + 1, **{key: round(float(value), 4) for key, value in losses.items()}})
            print(f"clip_pretrain: step {index + 1}/{settings.num_steps} " +
                  " ".join(f"{key} {value:.3f}" for key, value in curve[-1].items() if key != "step"), flush=True)
    params, log_scale = jax.device_get(state)

    # Held-out people; the crops and images search among all their split's texts.
    report = {
        "steps": settings.num_steps, "seconds": round(time.perf_counter() - started, 1),
        "settings": settings.to_dict(), "curve": curve,
        "test_crop_to_part_text": retrieval_accuracy(clip, params, test.crops, test.crop_labels, ids(test.part_texts)),
        "test_image_to_text": retrieval_accuracy(clip, params, test.images, test.image_labels, ids(test.texts)),
        "test_part_texts": len(test.part_texts), "test_texts": len(test.texts),
    }
    write_clip_folder(out, clip.config, params, log_scale, report)
    print(f"clip_pretrain: test crops -> their part text {report['test_crop_to_part_text']:.3f} (of "
          f"{len(test.part_texts)}), images -> their text {report['test_image_to_text']:.3f} (of {len(test.texts)}); "
          f"{report['seconds']} s; wrote {out}", flush=True)
    return report


def cut_text_ids(ids: np.ndarray, length: int) -> np.ndarray:
    """Token ids (N, 77) cut to `length`; refuses a text that would lose its EOS (it would pool elsewhere)."""
    eos = ids.max()
    if not (ids[:, :length] == eos).any(axis=1).all():
        raise BadInput(f"clip_pretrain.text_length {length} cuts a text before its end; raise it")
    return ids[:, :length]


def write_clip_folder(out: str, clip_config: CLIPConfig, params: Any, log_scale: Any, report: dict[str, Any]) -> None:
    """A CLIPModel folder at `out`: config.json, flax_model.msgpack (with `logit_scale`), the report."""
    folder = storage.path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(clip_config.to_json_string())
    weights = {**jax.tree.map(np.asarray, params), "logit_scale": np.asarray(log_scale, np.float32)}
    (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(weights))
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    from upgpt_jax.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    pretrain_clip(flags.FLAGS.config, flags.FLAGS.out)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from upgpt_jax.cli_errors import one_line_errors, parse_flags

    config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("out", None, "Output CLIPModel folder (config.json, flax_model.msgpack, pretrain.json).")
    flags.mark_flags_as_required(["config", "out"])
    app.run(one_line_errors(main), flags_parser=parse_flags)
