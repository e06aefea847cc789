"""The pose gallery: named SMPL specs the page offers, with their person masks as thumbnails.

Poses come from the SMPL files (FrankMocap pickles, .npz, .npy, .json) of a folder (by default the shared DeepFashion samples beside
this checkout, when they are there), the test split of the run's dataset, and, when neither
gives any, poses drawn from the synthetic dataset's pose prior, so the app works on any machine.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from upgpt_jax import storage
from upgpt_jax.sampling import ConditionError, TaskContext

# ../shared/samples/deepfashion beside the checkout: FrankMocap outputs of the original app.
DEFAULT_POSE_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared/samples/deepfashion/app_cache/pose"
_SMPL_FILES = ("*.p", "*.pkl", "*.npz", "*.npy", "*.json")  # what read_smpl reads


def pose_gallery(context: TaskContext, pose_dir: str | None, num_examples: int = 6,
                 num_synthetic: int = 3) -> dict[str, Any]:
    """{label: SMPL spec} (a file path, "example:K" or 85 numbers), in the order the page lists them."""
    gallery: dict[str, Any] = {}
    folder = storage.path(pose_dir) if pose_dir else DEFAULT_POSE_DIR
    if folder.is_dir():
        for pattern in _SMPL_FILES:
            for path in sorted(folder.rglob(pattern)):
                gallery[f"{path.parent.name}/{path.name}"] = str(path)
    try:
        count = min(num_examples, len(context.examples))
    except ConditionError:  # converted weights without a dataset: no examples to offer
        count = 0
    for index in range(count):
        gallery[f"test example {index}"] = f"example:{index}"
    if not gallery:
        from upgpt_jax.data.synthetic.pose_prior import default_prior, sample_pose

        for seed in range(num_synthetic):
            pose = sample_pose(np.random.default_rng(seed), default_prior(), np.zeros(10), context.image_size)
            gallery[f"synthetic pose {seed}"] = [float(x) for x in pose]
    return gallery


def thumbnails(context: TaskContext, gallery: dict[str, Any]) -> list[tuple[np.ndarray, str]]:
    """(person mask as uint8 RGB, label) of every gallery pose that the page can show."""
    items = []
    for label, spec in gallery.items():
        try:
            smpl = context.smpl(spec, label)
        except ConditionError:
            continue  # an unreadable file in the folder: left out of the gallery
        mask = context.mask({}, smpl, None)
        items.append((np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1), label))
    return items
