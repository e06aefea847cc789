"""Batched host-side (numpy) transforms from stored records to model inputs.

The values follow the original data loader (ldm/data/deepfashion_inshop.py): images are
ToTensor'd then mapped to [-1, 1]; style crops get CLIP's normalisation; the person mask is
resized with nearest neighbour to the latent resolution and mapped to [-1, 1]. The original
stored masks as 0/1 bytes, so after ToTensor's division by 255 its "inside" value was
2/255 - 1 = -0.99216, not +1; the released weights were trained on that, hence
`original_mask_quirk`.

Two record kinds, two transforms: `PixelTransform` for the stored images (schema.record_spec),
`FeatureTransform` for precomputed VAE moments and CLIP embeddings (FEATURE_RECORD_KEYS).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from upgpt_jax.models.clip import CLIP_MEAN, CLIP_STD, clip_preprocess
from upgpt_jax.tokenizer import tokenize

Record = Mapping[str, Any]
Batch = dict[str, np.ndarray]

# Features mode: what a precomputed-feature record holds (written by the training tooling).
# latent_moments: the VAE encoder's (mean, logvar) of the target image, (h, w, 2 * latent_channels);
# text_embedding: CLIP text last hidden states (max_length, D); style_embedding: one CLIP feature per
# style part (P, D); mask/smpl/style_present: as in schema.record_spec.
FEATURE_RECORD_KEYS: tuple[str, ...] = (
    "latent_moments", "text_embedding", "style_embedding", "mask", "smpl", "style_present",
)
MASK_QUIRK_INSIDE = np.float32(2.0 / 255.0 - 1.0)  # the original's "inside" mask value
PERSON_MASK_RESIZES = ("nearest", "area")  # how a person mask reaches latent resolution (mask_to_latent)


def image_to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 in [-1, 1] (ToTensor, then x * 2 - 1)."""
    return images.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)


def nearest_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, H, W, C) -> (B, h, w, C) choosing the pixels PIL's NEAREST resize (torchvision's) picks.

    PIL samples output pixel x at input floor((x + 0.5) * H / h).
    """
    height, width = images.shape[1:3]
    rows = np.floor((np.arange(size[0]) + 0.5) * (height / size[0])).astype(np.int64)
    cols = np.floor((np.arange(size[1]) + 0.5) * (width / size[1])).astype(np.int64)
    return images[:, np.minimum(rows, height - 1)][:, :, np.minimum(cols, width - 1)]


def area_coverage(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 masks (B, H, W, 1), 255 = all inside -> float32 (B, h, w, 1): the fraction of each
    output pixel's block of (H/h) x (W/w) input pixels that is inside (an average pool; the sizes
    must divide), in steps of 1/255. Image-size masks hold 0 or 255; a features record's
    latent-size mask holds 255 x this fraction already (`mask_coverage`), and at its own size the
    pool is the identity, so training from features sees exactly what training from pixels sees."""
    batch, height, width, channels = masks.shape
    if height % size[0] or width % size[1]:
        raise ValueError(f"an area-resized person mask needs the latent size {tuple(size)} to divide the mask "
                         f"size {(height, width)}")
    blocks = masks.reshape(batch, size[0], height // size[0], size[1], width // size[1], channels)
    return np.round(blocks.mean(axis=(2, 4), dtype=np.float32)) / np.float32(255.0)


def latent_loss_weights(weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per-pixel loss weights float32 (B, H, W, 1) -> (B, h, w, 1) for the eps loss at latent size:
    each latent pixel the mean of its block (so a part narrower than a latent pixel keeps its share,
    where the original's nearest resize keeps it or drops it), each example's map divided by its mean
    (the loss keeps its scale, and the weights move it between pixels only)."""
    batch, height, width, channels = weights.shape
    if height % size[0] or width % size[1]:
        raise ValueError(f"loss weights of size {(height, width)} cannot be pooled to the latent size {tuple(size)}")
    pooled = weights.reshape(batch, size[0], height // size[0], size[1], width // size[1], channels).mean(
        axis=(2, 4), dtype=np.float32)
    return (pooled / pooled.mean(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def mask_coverage(person_masks: np.ndarray, original_mask_quirk: bool = False) -> np.ndarray:
    """`mask_to_latent`'s values -> uint8 masks at latent size, 255 x the share covered (rounded):
    what a features record stores, which mask_to_latent maps back to the same values (to 1/255)."""
    inside_value = MASK_QUIRK_INSIDE if original_mask_quirk else np.float32(1.0)
    share = (np.asarray(person_masks, np.float32) + np.float32(1.0)) / (inside_value + np.float32(1.0))
    return np.round(np.clip(share, 0.0, 1.0) * 255.0).astype(np.uint8)


def mask_to_latent(masks: np.ndarray, latent_size: tuple[int, int], original_mask_quirk: bool = False,
                   resize: str = "nearest") -> np.ndarray:
    """Person masks uint8 (B, H, W, 1), 0 or 255 (or a features record's coverage, see
    `area_coverage`) -> float32 (B, h, w, 1): -1 outside, +1 inside, in between on the edge.

    With `original_mask_quirk` inside is -0.99216 (2/255 - 1), as the released weights expect.
    `resize` (config `data.person_mask_resize`): "nearest" picks one pixel per latent pixel, as the
    original does (torchvision's NEAREST); "area" gives each latent pixel the fraction of its block
    the person covers, mapped linearly between the outside and inside values. At 256x192 (f=8) one
    latent pixel is 3% of an arm's length and nearest costs nothing; at the synthetic 64x48 (f=4) a
    latent pixel is 4 pixels, an arm is 2 latent pixels wide, and nearest tells the UNet where the
    silhouette's edge lies only to +-2 pixels: the samples' edges then wander by a pixel (README,
    "What the tiny runs learn").
    """
    if masks.ndim != 4 or masks.shape[-1] != 1:
        raise ValueError(f"expected person masks of shape (B, H, W, 1), got {masks.shape}")
    if resize == "nearest":
        coverage = (nearest_resize(masks, latent_size) > 0).astype(np.float32)
    elif resize == "area":
        coverage = area_coverage(masks, latent_size)
    else:
        raise ValueError(f"data.person_mask_resize must be one of {PERSON_MASK_RESIZES}, got {resize!r}")
    inside_value = MASK_QUIRK_INSIDE if original_mask_quirk else np.float32(1.0)
    return (np.float32(-1.0) + coverage * (inside_value + np.float32(1.0))).astype(np.float32)


def mask_options(data_config: Any) -> dict[str, Any]:
    """The transforms' person-mask options (original_mask_quirk, person_mask_resize) as
    `data_config` (config.data) sets them; runs saved before `person_mask_resize` existed read
    "nearest", which they were trained with."""
    return {"original_mask_quirk": bool(data_config.original_mask_quirk),
            "person_mask_resize": str(data_config.get("person_mask_resize", "nearest"))}


def styles_to_clip(styles: np.ndarray, clip_image_size: int) -> np.ndarray:
    """Style crops uint8 (B, P, S, S, 3) -> CLIP-normalised float32 (B, P, size, size, 3).

    Crops already at the CLIP size are only normalised (vectorised; the same arithmetic as
    `clip_preprocess`); others go through `clip_preprocess` (PIL bicubic resize) one by one.
    """
    if styles.shape[2:4] == (clip_image_size, clip_image_size):
        pixels = styles.astype(np.float64) / 255.0
        return ((pixels - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(np.float32)
    crops = [clip_preprocess(crop, clip_image_size) for crop in styles.reshape((-1,) + styles.shape[2:])]
    return np.stack(crops).reshape(styles.shape[:2] + crops[0].shape)


def decode_texts(texts: Sequence[str | bytes]) -> list[str]:
    """Texts as str (TFDS data sources return bytes)."""
    return [text.decode("utf-8") if isinstance(text, bytes) else str(text) for text in texts]


def stack_field(records: Sequence[Record], key: str) -> np.ndarray:
    """One field of every record stacked on a new leading axis; a clear error if a record lacks it."""
    try:
        return np.stack([np.asarray(record[key]) for record in records])
    except KeyError:
        raise KeyError(f"a record has no field {key!r}; it has {sorted(records[0])}") from None


@dataclasses.dataclass(frozen=True)
class PixelTransform:
    """Stored records (schema.record_spec) -> model inputs.

    Output: image float32 (B, H, W, 3) in [-1, 1]; person_mask float32 (B, h, w, 1);
    text_ids int32 (B, max_length); styles float32 (B, P, clip, clip, 3); style_present bool (B, P);
    pose float32 (B, 85); with `include_source_image` also source_image float32 (B, H, W, 3); where
    the records carry loss weights (B, H, W, 1), `loss_weights` (B, h, w, 1) (latent_loss_weights).
    """

    tokenizer: Any  # transformers CLIPTokenizer (upgpt_jax.tokenizer.load_clip_tokenizer)
    latent_size: tuple[int, int]
    clip_image_size: int
    max_length: int = 77
    original_mask_quirk: bool = False
    person_mask_resize: str = "nearest"  # mask_to_latent's `resize`
    include_source_image: bool = False

    def __call__(self, records: Sequence[Record]) -> Batch:
        batch = {
            "image": image_to_unit_range(stack_field(records, "image")),
            "person_mask": mask_to_latent(stack_field(records, "mask"), self.latent_size, self.original_mask_quirk,
                                          self.person_mask_resize),
            "text_ids": tokenize(self.tokenizer, decode_texts([record["text"] for record in records]), self.max_length),
            "styles": styles_to_clip(stack_field(records, "styles"), self.clip_image_size),
            "style_present": stack_field(records, "style_present").astype(np.bool_),
            "pose": stack_field(records, "smpl").astype(np.float32),
        }
        if self.include_source_image:
            batch["source_image"] = image_to_unit_range(stack_field(records, "source_image"))
        if "loss_weights" in records[0]:  # in-memory synthetic records with data.part_loss_weights
            batch["loss_weights"] = latent_loss_weights(stack_field(records, "loss_weights"), self.latent_size)
        return batch


@dataclasses.dataclass(frozen=True)
class FeatureTransform:
    """Precomputed-feature records (FEATURE_RECORD_KEYS) -> model inputs, no tokenising or CLIP.

    Output: latent_moments, text_embedding, style_embedding (float32, as stored); person_mask,
    style_present, pose as in PixelTransform. The latent size is the stored moments' size.
    """

    original_mask_quirk: bool = False
    person_mask_resize: str = "nearest"  # mask_to_latent's `resize`

    def __call__(self, records: Sequence[Record]) -> Batch:
        missing = [key for key in FEATURE_RECORD_KEYS if key not in records[0]]
        if missing:
            raise KeyError(f"features mode: records lack {missing}; expected {FEATURE_RECORD_KEYS}, "
                           f"got {sorted(records[0])}")
        moments = stack_field(records, "latent_moments").astype(np.float32)
        return {
            "latent_moments": moments,
            "text_embedding": stack_field(records, "text_embedding").astype(np.float32),
            "style_embedding": stack_field(records, "style_embedding").astype(np.float32),
            "person_mask": mask_to_latent(stack_field(records, "mask"), moments.shape[1:3], self.original_mask_quirk,
                                          self.person_mask_resize),
            "style_present": stack_field(records, "style_present").astype(np.bool_),
            "pose": stack_field(records, "smpl").astype(np.float32),
        }


def pixel_transform_from_config(model_config: Any, tokenizer: Any, original_mask_quirk: bool = False,
                                include_source_image: bool = False, person_mask_resize: str = "nearest"
                                ) -> PixelTransform:
    """PixelTransform for `config.model`: latent size = image size / the VAE's downsampling."""
    downsample = 2 ** (len(model_config.vae.channel_mult) - 1)
    height, width = model_config.image_size
    return PixelTransform(
        tokenizer=tokenizer,
        latent_size=(height // downsample, width // downsample),
        clip_image_size=int(model_config.clip.image_size),
        max_length=int(model_config.clip.max_length),
        original_mask_quirk=original_mask_quirk,
        person_mask_resize=person_mask_resize,
        include_source_image=include_source_image,
    )
