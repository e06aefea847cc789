"""The diffusion stage's input: records (synthetic in memory, or a prepared TFDS folder) -> pipeline,
or precomputed features (config.data.features_dir, see upgpt_jax.train.precompute)."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import ml_collections

from upgpt_jax.data.features import FeatureSource, check_signature
from upgpt_jax.data.pipeline import InputPipeline
from upgpt_jax.data.records import synthetic_pair_record
from upgpt_jax.data.synthetic import check_part_names, identity_from_id, part_weight_map
from upgpt_jax.data.transforms import FeatureTransform, mask_options, pixel_transform_from_config
from upgpt_jax.tokenizer import load_clip_tokenizer


class SyntheticPairs:
    """The `synthetic_people` train records rendered on demand (and memoised), no files needed.

    Record k is the one the TFDS builder (upgpt_jax/data/builders/synthetic_people.py) stores as record k
    (`upgpt_jax.data.records.synthetic_pair_record`). It pickles without its memo, so each input
    worker process (config.data.num_workers) renders and memoises the records it reads itself.
    """

    def __init__(self, num_examples: int, image_size: tuple[int, int], style_size: int, seed: int = 0,
                 colour_free_text_fraction: float = 0.0, part_loss_weights: Mapping[str, float] | None = None):
        if num_examples < 1:
            raise ValueError(f"data.num_examples must be >= 1, got {num_examples}")
        self.num_examples = num_examples
        self.image_size = tuple(image_size)
        self.style_size = style_size
        self.seed = seed
        self.colour_free_text_fraction = colour_free_text_fraction  # see synthetic_pair_record
        # part -> eps-loss weight (config data.part_loss_weights): each record then carries its
        # target's weight map (synthetic.part_weight_map), which the pixel transform pools to latent size.
        self.part_loss_weights = dict(part_loss_weights or {})
        if self.part_loss_weights:
            check_part_names(self.part_loss_weights)
        self._record = functools.lru_cache(maxsize=num_examples)(self._render)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_record"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._record = functools.lru_cache(maxsize=self.num_examples)(self._render)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"record {index} is outside the {self.num_examples} synthetic examples")
        return self._record(index)

    def _render(self, index: int) -> dict[str, Any]:
        record = synthetic_pair_record(index, "train", self.image_size, self.style_size, self.seed,
                                       self.colour_free_text_fraction)[1]
        if self.part_loss_weights:
            identity = identity_from_id(int(record["identity"]), self.seed)
            record["loss_weights"] = part_weight_map(identity, record["smpl"], self.part_loss_weights, self.image_size)
        return record


def training_source(data_config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict) -> Any:
    """The random-access train split named by `data_config` (see config_base: `data`)."""
    if not data_config.data_dir:
        if data_config.dataset != "synthetic_people":
            raise ValueError(f"data.data_dir is empty, which only works for dataset 'synthetic_people' (rendered "
                             f"in memory); dataset {data_config.dataset!r} needs a prepared data_dir")
        return SyntheticPairs(data_config.num_examples, model_config.image_size, model_config.clip.image_size,
                              colour_free_text_fraction=data_config.get("colour_free_text_fraction", 0.0),
                              part_loss_weights=data_config.get("part_loss_weights", {}))
    if data_config.get("colour_free_text_fraction", 0.0):
        raise ValueError("data.colour_free_text_fraction applies to synthetic_people rendered in memory; "
                         "with a data_dir the stored texts are read as they are: set it to 0")
    if data_config.get("part_loss_weights", {}):
        raise ValueError("data.part_loss_weights needs each target's part map, which only synthetic_people rendered "
                         "in memory has (prepared datasets store no segmentation): set it to {} with a data_dir")
    import tensorflow_datasets as tfds  # only needed for prepared datasets

    return tfds.data_source(data_config.dataset, data_dir=data_config.data_dir, split="train", download=False)


def training_pipeline(config: ml_collections.ConfigDict) -> InputPipeline:
    """This host's pixel batches (image, person_mask, text_ids, styles, style_present, pose), or with
    `config.data.features_dir` its feature batches (train.step.FEATURE_KEYS), in the same order."""
    if config.data.features_dir:
        if config.data.get("part_loss_weights", {}):
            raise ValueError("data.part_loss_weights weights the loss by the rendered part maps, which precomputed "
                             "features do not store: set it to {} with a features_dir")
        features = FeatureSource(config.data.features_dir)
        check_signature(features.metadata, config, config.data.features_dir)
        return InputPipeline(features, config.train.batch_size,
                             FeatureTransform(**mask_options(config.data)),
                             seed=config.train.seed, num_workers=config.data.num_workers)
    transform = pixel_transform_from_config(config.model, load_clip_tokenizer(), **mask_options(config.data))
    return InputPipeline(training_source(config.data, config.model), config.train.batch_size, transform,
                         seed=config.train.seed, num_workers=config.data.num_workers)
