"""People -> images: CLIP-encode the conditions, run the guided sampler, decode, in one jit per batch.

Batches have a fixed size (`sampling.batch_size`, rounded up to the mesh's batch shards) so any
number of requests compiles once; the batch (inputs and activations) is sharded as the config's
axis rules say (by default over the mesh's ("data", "fsdp") axes).
Each sample's starting noise is drawn from its own seed, so a sample does not change with the
batch it lands in, and frames that share a seed share their noise (smooth interpolation).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from upgpt_jax.config_base import STYLE_PARTS
from upgpt_jax.data.transforms import mask_to_latent, styles_to_clip
from upgpt_jax.distributed import host_to_global
from upgpt_jax.diffusion import GUIDANCE_ORDER, NoiseSchedule, guided_eps_fn, sample, sampling_timesteps
from upgpt_jax.models.clip import encode_style_images, encode_style_texts, encode_text_tokens
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.sampling.conditions import Person, check_person
from upgpt_jax.sampling.loading import LoadedModel
from upgpt_jax.sharding import batch_sharding, batch_shards, on_mesh, pad_batch
from upgpt_jax.tokenizer import tokenize


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """What the sampler does (config.sampling); hashable, so compiled functions are reused."""

    method: str = "ddim"
    num_steps: int = 50
    eta: float = 0.0
    guidance: tuple[tuple[str, float], ...] = (("pose", 1.0), ("style", 1.0), ("text", 1.0))
    batch_size: int = 8
    dropped: tuple[str, ...] = ()  # conditions replaced by their null embeddings (ablations)

    @classmethod
    def from_config(cls, sampling: ml_collections.ConfigDict, **overrides: Any) -> SamplingSettings:
        values = dict(method=sampling.method, num_steps=int(sampling.num_steps), eta=float(sampling.eta),
                      guidance=tuple(sorted((k, float(v)) for k, v in dict(sampling.guidance).items())),
                      batch_size=int(sampling.batch_size))
        values.update({key: value for key, value in overrides.items() if value is not None})
        if isinstance(values["guidance"], Mapping):
            values["guidance"] = tuple(sorted((k, float(v)) for k, v in values["guidance"].items()))
        return cls(**values)


def encode_conditions(loaded: LoadedModel, people: Sequence[Person]) -> dict[str, np.ndarray]:
    """Host-side model inputs of `people`: text ids, CLIP-ready crops, style-text ids, masks, poses."""
    config = loaded.config.model
    for index, person in enumerate(people):
        check_person(person, config.image_size, person.origin.get("name", f"sample {index}"))
    size = int(config.clip.image_size)
    crops = np.zeros((len(people), len(STYLE_PARTS), size, size, 3), np.uint8)
    style_texts = [["" for _ in STYLE_PARTS] for _ in people]
    from_text = np.zeros((len(people), len(STYLE_PARTS)), bool)
    present = np.zeros((len(people), len(STYLE_PARTS)), bool)
    for row, person in enumerate(people):
        for column, part in enumerate(STYLE_PARTS):
            if part in person.style_texts:
                style_texts[row][column] = person.style_texts[part]
                from_text[row, column] = present[row, column] = True
            elif part in person.style_images:
                crop = person.style_images[part]
                crops[row, column] = crop if crop.shape[:2] == (size, size) else _resize(crop, size)
                present[row, column] = True
    downsample = 2 ** (len(config.vae.channel_mult) - 1)
    latent_size = (config.image_size[0] // downsample, config.image_size[1] // downsample)
    masks = np.stack([person.mask for person in people])[..., None].astype(np.uint8) * 255
    max_length = int(config.clip.max_length)
    return {
        "text_ids": tokenize(loaded.tokenizer, [person.text for person in people], max_length),
        "styles": styles_to_clip(crops, size),
        "style_text_ids": tokenize(loaded.tokenizer, [text for row in style_texts for text in row], max_length)
        .reshape(len(people), len(STYLE_PARTS), max_length),
        "style_from_text": from_text,
        "style_present": present,
        "person_mask": mask_to_latent(masks, latent_size, bool(loaded.config.data.original_mask_quirk)),
        "pose": np.stack([person.smpl for person in people]).astype(np.float32),
    }


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC), np.uint8)


class Sampler:
    """Samples images for lists of `Person`s with one loaded model and one `SamplingSettings`."""

    def __init__(self, loaded: LoadedModel, settings: SamplingSettings):
        self.loaded = loaded
        self.settings = settings
        sampling_timesteps(settings.method, settings.num_steps, int(loaded.config.diffusion.num_timesteps))  # checks
        unknown = set(dict(settings.guidance)) - set(GUIDANCE_ORDER)
        if unknown:
            raise ValueError(f"guidance for unknown conditions {sorted(unknown)}; the conditions are {GUIDANCE_ORDER}")
        shards = batch_shards(loaded.mesh, loaded.config.axis_rules)
        self.batch_size = -(-settings.batch_size // shards) * shards
        # Built once per Sampler: keep the Sampler to reuse the compiled function.
        self._run = jitted_sampler(loaded.model, loaded.clip, loaded.config.diffusion, settings, loaded.mesh,
                                   loaded.config.axis_rules)
        self._compiled = False  # until its first batch has run

    def __call__(self, people: Sequence[Person], seeds: Sequence[int], progress: bool = False,
                 params: Any = None, label: str = "sample") -> np.ndarray:
        """uint8 images (N, H, W, 3) for `people`, sample i from noise seed `seeds[i]`; `params`
        replaces the loaded model's weights (e.g. a training run's current EMA). With `progress`, a
        bar named `label` counts the batches and says when its first batch compiles the sampler."""
        params = self.loaded.params if params is None else params
        if len(seeds) != len(people):
            raise ValueError(f"{len(people)} people but {len(seeds)} seeds")
        if not people:
            height, width = self.loaded.config.model.image_size
            return np.zeros((0, height, width, 3), np.uint8)
        images = []
        chunks = list(_chunks(len(people), self.batch_size))
        bar = tqdm(chunks, desc=label if self._compiled else f"{label} (compiling the sampler)", unit="batch",
                   disable=not progress, dynamic_ncols=True)
        for start, stop in bar:
            inputs = encode_conditions(self.loaded, people[start:stop])
            inputs["seeds"] = np.asarray(seeds[start:stop], np.uint32)
            padded = {key: pad_batch(value, self.batch_size) for key, value in inputs.items()}
            batch = host_to_global(padded, batch_sharding(self.loaded.mesh, self.loaded.config.axis_rules))
            out = self._run(params, self.loaded.clip_params, batch)
            images.append(np.asarray(jax.device_get(out))[: stop - start])
            if not self._compiled:
                self._compiled = True
                bar.set_description(label, refresh=False)
        return np.concatenate(images)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def condition_embeddings(clip: Any, clip_params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """`encode_conditions`' arrays -> the fusion's inputs {text, style, pose, style_present}: CLIP
    text states, and per part the style crop's image embedding or its style text's embedding."""
    style = jnp.where(batch["style_from_text"][..., None],
                      encode_style_texts(clip, clip_params, batch["style_text_ids"]),
                      encode_style_images(clip, clip_params, batch["styles"]))
    return dict(text=encode_text_tokens(clip, clip_params, batch["text_ids"]), style=style, pose=batch["pose"],
                style_present=batch["style_present"])


def jitted_sampler(model: UPGPT, clip: Any, diffusion: ml_collections.ConfigDict, settings: SamplingSettings,
                   mesh: Mesh, rules: Any) -> Callable[..., jax.Array]:
    """The jitted conditions -> images function of one model and one set of sampling settings;
    images and activations are batch-sharded on `mesh` by the axis `rules` (config.axis_rules)."""
    schedule = NoiseSchedule.from_config(diffusion)
    scales = dict(settings.guidance)

    def run(params: Any, clip_params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        conditions = condition_embeddings(clip, clip_params, batch)
        mask = batch["person_mask"]
        latent_shape = mask.shape[1:3] + (model.unet_config["out_channels"],)
        noise = jax.vmap(lambda seed: jax.random.normal(jax.random.key(seed), latent_shape))(batch["seeds"])
        eps_fn = guided_eps_fn(model, params, mask, conditions, scales, settings.dropped)
        # Stochastic samplers' per-step noise: a key per example (not the x_T key), so that a seed
        # gives the same image whatever else is in its batch.
        rng = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), 1))(batch["seeds"])
        latents = sample(eps_fn, schedule, noise, rng, method=settings.method, num_steps=settings.num_steps,
                         eta=settings.eta)
        return to_uint8(model.apply({"params": params}, latents, method=UPGPT.decode))

    return jax.jit(on_mesh(run, mesh, rules), out_shardings=batch_sharding(mesh, rules))


def to_uint8(images: jax.Array) -> jax.Array:
    """Decoded images in about [-1, 1] -> uint8 pixels (rounded, clipped)."""
    return jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
