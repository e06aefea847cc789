"""Where conditions come from when the user names none: the run's dataset, and person masks.

`DatasetExamples` reads the TEST split of the config's dataset (unseen identities), rendered in
memory for the embedded `synthetic_people` or read from a prepared TFDS folder. A pose without a
mask file gets one drawn: `mesh_mask` rasterises the body mesh a FrankMocap pickle carries (the
fit to that very photo; IoU 0.74 and 0.78 with the original's masks on its held-out app poses 4
and 5); `silhouette` draws any SMPL vector through smplx when the user gives SMPL model files,
otherwise as the synthetic mannequin's silhouette (an approximate clothed body: IoU 0.45 and 0.68
on those poses; exact for runs on synthetic_people when the mannequin's identity is known).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections
import numpy as np

from upgpt_jax.data.transforms import nearest_resize
from upgpt_jax.sampling.conditions import ConditionError, Person, person_from_record

DEFAULT_MANNEQUIN = 1  # identity whose silhouette stands in when the person's own is unknown
# The pixel frame of pred_vertices_img in the original's pose files (smpl_256/<path>.p): FrankMocap
# ran on the 256x192 images, whose 256x192 mask files the original resized (nearest) to the latents.
FRANKMOCAP_FRAME = (256, 192)


class DatasetExamples:
    """Random access to the test pairs of `config.data` (see upgpt_jax.data.schema)."""

    def __init__(self, config: ml_collections.ConfigDict, split: str = "test"):
        self.config = config
        self.split = split
        data = config.data
        if data.data_dir:
            import tensorflow_datasets as tfds

            self._source = tfds.data_source(data.dataset, data_dir=data.data_dir, split=split, download=False)
        elif data.dataset == "synthetic_people":
            self._source = None
        else:
            raise ConditionError(f"data.data_dir is empty and dataset {data.dataset!r} is not rendered in memory: "
                                 "give the conditions explicitly or set --data_dir")
        self._cached_record = functools.lru_cache(maxsize=64)(self._record)

    def __len__(self) -> int:
        from upgpt_jax.data.synthetic import split_identity_ids

        return len(self._source) if self._source is not None else 10 * len(split_identity_ids(self.split))

    def record(self, index: int) -> dict[str, Any]:
        """Example `index`'s record (rendered once: the last 64 are cached per instance)."""
        return self._cached_record(index)

    def _record(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise ConditionError(f"example {index} is outside the {len(self)} {self.split} examples of "
                                 f"{self.config.data.dataset}")
        if self._source is not None:
            return dict(self._source[index])
        from upgpt_jax.data.records import synthetic_pair_record

        model = self.config.model
        return synthetic_pair_record(index, self.split, tuple(model.image_size), int(model.clip.image_size))[1]

    def person(self, index: int, side: str = "target") -> Person:
        person = person_from_record(self.record(index), side, source=f"{self.split} example {index}")
        person.origin["mask"] = "dataset"
        if side == "source":
            person.mask = silhouette(person.smpl, tuple(self.config.model.image_size), self.mannequin(index))
            person.origin["mask"] = silhouette_kind(None)
        return person

    def image(self, index: int, side: str = "target") -> np.ndarray:
        return np.asarray(self.record(index)["image" if side == "target" else "source_image"])

    def mannequin(self, index: int) -> int | None:
        """The synthetic identity of example `index` (for its exact silhouette), else None."""
        if self.config.data.dataset != "synthetic_people":
            return None
        return int(self.record(index)["identity"])


def silhouette(smpl: np.ndarray, image_size: tuple[int, int], mannequin: int | None = None,
               smpl_model_dir: str | os.PathLike | None = None) -> np.ndarray:
    """bool (H, W) person mask of `smpl`: smplx's mesh with `smpl_model_dir`, else the mannequin."""
    if smpl_model_dir:
        from upgpt_jax.smpl.masks import mask_from_smpl

        return np.asarray(mask_from_smpl(smpl, smpl_model_dir, image_size)) > 0
    from upgpt_jax.data.synthetic import identity_from_id
    from upgpt_jax.data.synthetic.render import render

    identity = identity_from_id(DEFAULT_MANNEQUIN if mannequin is None else mannequin)
    return render(identity, np.asarray(smpl, np.float32), tuple(image_size))[1]


def silhouette_kind(smpl_model_dir: str | os.PathLike | None) -> str:
    """How `silhouette` draws a mask ("smplx" or "mannequin"), as samples.json records it."""
    return "smplx" if smpl_model_dir else "mannequin"


def mesh_mask(vertices: np.ndarray, faces: np.ndarray, image_size: tuple[int, int], source: str = "smpl") -> np.ndarray:
    """bool (H, W): FrankMocap's projected mesh (`pred_vertices_img`, `faces`) rasterised in its
    256x192 frame, then nearest-resized to `image_size` (as PIL's NEAREST, the original's resize)."""
    from upgpt_jax.smpl.masks import mask_from_vertices

    try:
        mask = mask_from_vertices(vertices, faces, FRANKMOCAP_FRAME)
    except ValueError as error:
        raise ConditionError(f"{source}: {error}") from None
    if tuple(image_size) != FRANKMOCAP_FRAME:
        mask = nearest_resize(mask[None, ..., None], tuple(image_size))[0, ..., 0]
    return mask
