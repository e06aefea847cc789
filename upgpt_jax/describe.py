"""Builds a UPGPT config, reports its parameters, and runs it once end to end.

    python -m upgpt_jax.describe --config configs/synthetic_tiny.py
    python -m upgpt_jax.describe --config configs/upgpt_256.py --norun   # shapes only, no allocation

For every sub-model: parameter count and bytes (from `jax.eval_shape`, nothing allocated). With
`--run` (default), it also initialises the model, tokenises and CLIP-encodes a content text, encodes
(empty) style crops, a T-pose and a person mask, computes the training loss and decodes latents,
printing shapes and timings: a smoke test of the whole conditioning path on this machine.
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from upgpt_jax.diffusion import NoiseSchedule, eps_loss
from upgpt_jax.models.clip import clip_from_config, clip_param_shapes, clip_preprocess, encode_style_images, \
    encode_text_tokens
from upgpt_jax.models.upgpt import build_model, example_inputs, init_params
from upgpt_jax.tokenizer import load_clip_tokenizer, tokenize

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic_tiny.py", "Model config file.")
_RUN = flags.DEFINE_bool("run", True, "Initialise and run the model once (use --norun for the big configs).")
_TEXT = flags.DEFINE_string("text", "a woman with long brown hair in a red striped short-sleeve top and blue "
                            "trousers", "Content text to encode.")


def _size(tree) -> tuple[int, int]:
    leaves = jax.tree.leaves(tree)
    return sum(int(np.prod(x.shape)) for x in leaves), sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)


def _report_parameters(config) -> None:
    model = build_model(config.model)
    shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), **example_inputs(config.model))))
    rows = dict(shapes["params"])
    clip_config = {k: v for k, v in config.model.clip.to_dict().items() if k != "path"}
    from upgpt_jax.models.clip import build_clip_encoders, clip_config as make_clip_config
    rows["clip (frozen)"] = clip_param_shapes(build_clip_encoders(make_clip_config(**clip_config)))
    print(f"{'module':<16}{'params':>16}{'MiB':>12}")
    for name, tree in rows.items():
        count, size = _size(tree)
        print(f"{name:<16}{count:>16,}{size / 2**20:>12.1f}")


def _run_once(config) -> None:
    model_config = config.model
    model = build_model(model_config)
    start = time.perf_counter()
    params = init_params(model, model_config, config.seed)
    clip, clip_params = clip_from_config(model_config.clip, seed=config.seed)
    print(f"initialised in {time.perf_counter() - start:.1f}s")

    tokens = tokenize(load_clip_tokenizer(), [_TEXT.value], max_length=model_config.clip.max_length)
    text = encode_text_tokens(clip, clip_params, tokens)
    # A missing style part is CLIP's embedding of a black crop, as in the original data loader.
    black = clip_preprocess(np.zeros((224, 224, 3), np.uint8), size=model_config.clip.image_size)
    style = encode_style_images(clip, clip_params, np.broadcast_to(black, (1, model_config.fusion.num_parts,
                                                                          *black.shape)))
    height, width = model_config.image_size
    images = jnp.zeros((1, height, width, 3))
    latents = model.apply({"params": params}, images, method=model.encode)
    mask = jnp.ones(latents.shape[:3] + (1,))
    batch = dict(latents=latents, person_mask=mask, text=text, style=style, pose=jnp.zeros((1, model_config.fusion.pose_dim)))
    schedule = NoiseSchedule.from_config(config.diffusion)
    loss_fn = jax.jit(lambda p, b, rng: eps_loss(model, p, b, schedule, rng)[0])
    start = time.perf_counter()
    loss = float(loss_fn(params, batch, jax.random.key(1)))
    print(f"tokens {tokens.shape} -> text {text.shape}, style {style.shape}, latents {latents.shape}")
    print(f"training loss at init {loss:.4f} (compiled and ran in {time.perf_counter() - start:.1f}s)")
    decoded = model.apply({"params": params}, latents, method=model.decode)
    print(f"decoded {decoded.shape}, range [{float(decoded.min()):.2f}, {float(decoded.max()):.2f}]")


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")
    _report_parameters(config)
    if _RUN.value:
        _run_once(config)


if __name__ == "__main__":
    app.run(main)
