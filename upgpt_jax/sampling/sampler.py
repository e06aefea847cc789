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
from upgpt_jax.data.transforms import mask_options, mask_to_latent, styles_to_clip
from upgpt_jax.distributed import host_to_global
from upgpt_jax.diffusion import GUIDANCE_ORDER, NoiseSchedule, guided_eps_fn, sample, sampling_timesteps
from upgpt_jax.diffusion.editing import edit_region
from upgpt_jax.models.clip import encode_style_images, encode_style_texts, encode_text_tokens
from upgpt_jax.models.upgpt import UPGPT
from upgpt_jax.sampling.conditions import Person, check_person
from upgpt_jax.sampling.loading import LoadedModel
from upgpt_jax.sharding import batch_sharding, batch_shards, on_mesh, pad_batch
from upgpt_jax.tokenizer import tokenize


EDIT_REGIONS = ("inferred", "whole")  # SamplingSettings.edit_region
EDITED = "edited/"  # the key prefix of the edited person's arrays in an edit batch
REGION_PROBES = 4  # noises diffusion.editing.edit_region averages over (DiffEdit's n)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """What the sampler does (config.sampling); hashable, so compiled functions are reused."""

    method: str = "ddim"
    num_steps: int = 50
    eta: float = 0.0
    guidance: tuple[tuple[str, float], ...] = (("pose", 1.0), ("style", 1.0), ("text", 1.0))
    batch_size: int = 8
    dropped: tuple[str, ...] = ()  # conditions replaced by their null embeddings (ablations)
    # Where an edited sample may differ from its unedited one (Sampler.edit): "inferred", the region
    # the edit acts on (diffusion.editing: DiffEdit's mask, blended sampling), or "whole" (the
    # original's edit: the edited conditions alone, so the whole person may change).
    edit_region: str = "inferred"

    @classmethod
    def from_config(cls, sampling: ml_collections.ConfigDict, **overrides: Any) -> SamplingSettings:
        values = dict(method=sampling.method, num_steps=int(sampling.num_steps), eta=float(sampling.eta),
                      guidance=tuple(sorted((k, float(v)) for k, v in dict(sampling.guidance).items())),
                      batch_size=int(sampling.batch_size), edit_region=sampling.get("edit_region", "inferred"))
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
    latent_size = _latent_size(config)
    masks = np.stack([person.mask for person in people])[..., None].astype(np.uint8) * 255
    mask = mask_options(loaded.config.data)
    max_length = int(config.clip.max_length)
    return {
        "text_ids": tokenize(loaded.tokenizer, [person.text for person in people], max_length),
        "styles": styles_to_clip(crops, size),
        "style_text_ids": tokenize(loaded.tokenizer, [text for row in style_texts for text in row], max_length)
        .reshape(len(people), len(STYLE_PARTS), max_length),
        "style_from_text": from_text,
        "style_present": present,
        "person_mask": mask_to_latent(masks, latent_size, mask["original_mask_quirk"], mask["person_mask_resize"]),
        "pose": np.stack([person.smpl for person in people]).astype(np.float32),
    }


def _latent_size(model_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(h, w) of the latents: the image size over the VAE's downsampling."""
    downsample = 2 ** (len(model_config.vae.channel_mult) - 1)
    return model_config.image_size[0] // downsample, model_config.image_size[1] // downsample


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC), np.uint8)


class Sampler:
    """Samples images for lists of `Person`s with one loaded model and one `SamplingSettings`."""

    def __init__(self, loaded: LoadedModel, settings: SamplingSettings):
        self.loaded = loaded
        self.settings = settings
        sampling_timesteps(settings.method, settings.num_steps, int(loaded.config.diffusion.num_timesteps))  # checks
        if settings.edit_region not in EDIT_REGIONS:
            raise ValueError(f"edit_region must be one of {EDIT_REGIONS}, got {settings.edit_region!r}")
        unknown = set(dict(settings.guidance)) - set(GUIDANCE_ORDER)
        if unknown:
            raise ValueError(f"guidance for unknown conditions {sorted(unknown)}; the conditions are {GUIDANCE_ORDER}")
        shards = batch_shards(loaded.mesh, loaded.config.axis_rules)
        self.batch_size = -(-settings.batch_size // shards) * shards
        # Built once per Sampler: keep the Sampler to reuse the compiled function.
        self._run = jitted_sampler(loaded.model, loaded.clip, loaded.config.diffusion, settings, loaded.mesh,
                                   loaded.config.axis_rules)
        self._edit_run = None  # jitted_editor's function, built at the first edit
        self._compiled: set[Any] = set()  # the functions whose first batch has run

    def __call__(self, people: Sequence[Person], seeds: Sequence[int], progress: bool = False,
                 params: Any = None, label: str = "sample") -> np.ndarray:
        """uint8 images (N, H, W, 3) for `people`, sample i from noise seed `seeds[i]`; `params`
        replaces the loaded model's weights (e.g. a training run's current EMA). With `progress`, a
        bar named `label` counts the batches and says when its first batch compiles the sampler."""
        if len(seeds) != len(people):
            raise ValueError(f"{len(people)} people but {len(seeds)} seeds")
        if not people:
            return self._nothing()[0]

        def inputs(start: int, stop: int) -> dict[str, np.ndarray]:
            return dict(encode_conditions(self.loaded, people[start:stop]),
                        seeds=np.asarray(seeds[start:stop], np.uint32))

        return self._batches(self._run, len(people), inputs, params, progress, label)[0]

    def edit(self, unedited: Sequence[Person], edited: Sequence[Person], seeds: Sequence[int], progress: bool = False,
             label: str = "sample edit") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unedited images, edited images, edit regions) of pairs: `edited[i]` is `unedited[i]` with
        some conditions changed, both drawn from seed `seeds[i]`. The unedited image is the one
        `__call__` draws. With settings.edit_region "inferred" the edit is confined to the region it
        acts on (diffusion.editing; regions: float32 (N, h, w) at latent resolution, 1 inside): the
        edited latents are drawn by blended sampling, and outside the region (each latent pixel
        covering its block of pixels) the edited image is the unedited one. With "whole" it is
        `__call__`'s sample of `edited[i]` (regions all 1)."""
        if not len(unedited) == len(edited) == len(seeds):
            raise ValueError(f"{len(unedited)} unedited people, {len(edited)} edited and {len(seeds)} seeds")
        if not len(seeds):
            return self._nothing()
        if self._edit_run is None:
            self._edit_run = jitted_editor(self.loaded.model, self.loaded.clip, self.loaded.config.diffusion,
                                           self.settings, self.loaded.mesh, self.loaded.config.axis_rules)

        def inputs(start: int, stop: int) -> dict[str, np.ndarray]:
            pairs = dict(encode_conditions(self.loaded, unedited[start:stop]),
                         seeds=np.asarray(seeds[start:stop], np.uint32))
            changed = encode_conditions(self.loaded, edited[start:stop])
            return pairs | {EDITED + key: value for key, value in changed.items()}

        return self._batches(self._edit_run, len(unedited), inputs, None, progress, label)

    def _nothing(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Empty (images, images, regions), what no people give."""
        height, width = self.loaded.config.model.image_size
        images = np.zeros((0, height, width, 3), np.uint8)
        return images, images, np.zeros((0,) + _latent_size(self.loaded.config.model), np.float32)

    def _batches(self, run: Callable[..., Any], count: int, inputs: Callable[[int, int], dict[str, np.ndarray]],
                 params: Any, progress: bool, label: str) -> tuple[np.ndarray, ...]:
        """`run`'s outputs for `count` examples, concatenated: run on full padded batches of
        `inputs(start, stop)`, the host arrays of examples start..stop."""
        params = self.loaded.params if params is None else params
        outputs = []
        bar = tqdm(list(_chunks(count, self.batch_size)), unit="batch", disable=not progress, dynamic_ncols=True,
                   desc=label if run in self._compiled else f"{label} (compiling the sampler)")
        for start, stop in bar:
            padded = {key: pad_batch(value, self.batch_size) for key, value in inputs(start, stop).items()}
            batch = host_to_global(padded, batch_sharding(self.loaded.mesh, self.loaded.config.axis_rules))
            out = jax.device_get(run(params, self.loaded.clip_params, batch))
            outputs.append([np.asarray(array)[: stop - start] for array in (out if isinstance(out, tuple) else (out,))])
            if run not in self._compiled:
                self._compiled.add(run)
                bar.set_description(label, refresh=False)
        return tuple(np.concatenate(arrays) for arrays in zip(*outputs))


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

    def run(params: Any, clip_params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        eps_fn = _guided(model, params, clip, clip_params, batch, settings)
        noise, rng = _seed_noise(batch["seeds"], _latent_shape(model, batch))
        latents = sample(eps_fn, schedule, noise, rng, method=settings.method, num_steps=settings.num_steps,
                         eta=settings.eta)
        return to_uint8(model.apply({"params": params}, latents, method=UPGPT.decode))

    return jax.jit(on_mesh(run, mesh, rules), out_shardings=batch_sharding(mesh, rules))


def jitted_editor(model: UPGPT, clip: Any, diffusion: ml_collections.ConfigDict, settings: SamplingSettings,
                  mesh: Mesh, rules: Any) -> Callable[..., tuple[jax.Array, jax.Array, jax.Array]]:
    """`jitted_sampler` for edit pairs: a batch of unedited conditions and, under EDITED + key, the
    edited ones -> (unedited images, edited images, edit regions (B, h, w)), see Sampler.edit."""
    schedule = NoiseSchedule.from_config(diffusion)
    options = dict(method=settings.method, num_steps=settings.num_steps, eta=settings.eta)

    def run(params: Any, clip_params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        edited_batch = {key[len(EDITED):]: value for key, value in batch.items() if key.startswith(EDITED)}
        eps_unedited = _guided(model, params, clip, clip_params, batch, settings)
        eps_edited = _guided(model, params, clip, clip_params, edited_batch, settings)
        shape = _latent_shape(model, batch)
        noise, rng = _seed_noise(batch["seeds"], shape)
        unedited = sample(eps_unedited, schedule, noise, rng, **options)
        if settings.edit_region == "whole":
            region = jnp.ones(unedited.shape[:-1] + (1,), jnp.float32)
            edited = sample(eps_edited, schedule, noise, rng, **options)
        else:
            # The probe noises: a third stream of each seed (x_T and the sampler's are the others).
            probes = jax.vmap(lambda seed: jax.random.normal(jax.random.fold_in(jax.random.key(seed), 2),
                                                             (REGION_PROBES,) + shape))(batch["seeds"])
            region = edit_region(eps_unedited, eps_edited, schedule, unedited, jnp.swapaxes(probes, 0, 1))
            edited = sample(eps_edited, schedule, noise, rng, keep=(unedited, region), **options)
        before, after = (model.apply({"params": params}, latents, method=UPGPT.decode)
                         for latents in (unedited, edited))
        # Outside the region the pixels are the unedited ones: the decoder would otherwise carry
        # the edit a few pixels into the neighbouring parts (hair next to a recoloured top).
        scale = (before.shape[1] // region.shape[1], before.shape[2] // region.shape[2])
        inside = jnp.repeat(jnp.repeat(region, scale[0], axis=1), scale[1], axis=2) > 0
        return to_uint8(before), to_uint8(jnp.where(inside, after, before)), region[..., 0]

    sharding = batch_sharding(mesh, rules)
    return jax.jit(on_mesh(run, mesh, rules), out_shardings=(sharding, sharding, sharding))


def _guided(model: UPGPT, params: Any, clip: Any, clip_params: Any, batch: Mapping[str, jax.Array],
            settings: SamplingSettings) -> Any:
    """The guided eps function of one batch of `encode_conditions` arrays."""
    return guided_eps_fn(model, params, batch["person_mask"], condition_embeddings(clip, clip_params, batch),
                         dict(settings.guidance), settings.dropped)


def _latent_shape(model: UPGPT, batch: Mapping[str, jax.Array]) -> tuple[int, int, int]:
    return batch["person_mask"].shape[1:3] + (model.unet_config["out_channels"],)


def _seed_noise(seeds: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(x_T, per-example sampler keys) of each seed. The stochastic samplers' per-step noise comes
    from a key of its own (not the x_T key), so that a seed gives the same image whatever else is
    in its batch."""
    noise = jax.vmap(lambda seed: jax.random.normal(jax.random.key(seed), shape))(seeds)
    return noise, jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), 1))(seeds)


def to_uint8(images: jax.Array) -> jax.Array:
    """Decoded images in about [-1, 1] -> uint8 pixels (rounded, clipped)."""
    return jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
