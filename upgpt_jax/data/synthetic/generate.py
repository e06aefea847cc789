"""Examples and pose-transfer pairs of synthetic people, deterministic in their indices and seed.

Identities. Identity ``i`` (0 <= i < ``num_identities``) has attributes drawn from
``default_rng([seed, IDENTITY_STREAM, i])``, so they depend only on (seed, i). The split is a
rule on the id alone: ``i % 10 == 0`` is a *test* identity, every other id is *train* (90/10);
test identities never appear in the train split, so test examples show unseen people.

Examples. Example ``index`` of a split shows that split's identity number ``index % n``
(n = the split's identity count), posed by ``default_rng([seed, POSE_STREAM, split, index])``:
every identity recurs in many poses. No global random state is touched anywhere.

Pairs. ``make_pair(identity_id, seed)`` renders one identity in two independent poses (source
and target) so pose transfer has a ground-truth target.
"""

from __future__ import annotations

import functools
import multiprocessing
from typing import Iterator

import numpy as np

from upgpt_jax.data.synthetic.identity import Identity, describe, sample_identity
from upgpt_jax.data.synthetic.pose_prior import PosePrior, default_prior, sample_pose
from upgpt_jax.data.synthetic.render import downsample, render_raster
from upgpt_jax.data.synthetic.styles import style_crops

SPLITS = ("train", "test")
TEST_EVERY = 10
DEFAULT_NUM_IDENTITIES = 1000
IDENTITY_STREAM, POSE_STREAM, PAIR_STREAM = 1, 2, 3


def identity_split(identity_id: int) -> str:
    """"test" for ids divisible by 10, else "train"."""
    return "test" if identity_id % TEST_EVERY == 0 else "train"


def split_identity_ids(split: str, num_identities: int = DEFAULT_NUM_IDENTITIES) -> np.ndarray:
    """The ids in ``range(num_identities)`` that belong to ``split``, ascending."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    ids = np.arange(num_identities)
    is_test = ids % TEST_EVERY == 0  # the rule of identity_split, vectorised
    return ids[is_test if split == "test" else ~is_test]


@functools.lru_cache(maxsize=4096)
def identity_from_id(identity_id: int, seed: int = 0) -> Identity:
    """The attributes of identity ``identity_id`` under ``seed`` (cached: identities recur)."""
    return sample_identity(np.random.default_rng([seed, IDENTITY_STREAM, identity_id]))


def render_example(identity: Identity, identity_id: int, smpl: np.ndarray, image_size: tuple[int, int] = (64, 48),
                   style_size: int = 32, supersample: int = 1) -> dict[str, np.ndarray]:
    """One example dict for ``identity`` in pose ``smpl`` (see :func:`make_example` for the keys)."""
    raster = render_raster(identity, smpl, image_size, supersample)
    image, mask = downsample(raster, supersample)
    styles, style_present = style_crops(raster, identity.background, style_size)
    return {
        "image": image,
        "mask": mask,
        "smpl": np.asarray(smpl, np.float32),
        "text": describe(identity),
        "styles": styles,
        "style_present": style_present,
        "identity": np.int64(identity_id),
    }


def make_example(index: int, split: str = "train", image_size: tuple[int, int] = (64, 48), style_size: int = 32,
                 seed: int = 0, num_identities: int = DEFAULT_NUM_IDENTITIES, supersample: int = 1,
                 prior: PosePrior | None = None) -> dict[str, np.ndarray]:
    """Example ``index`` of ``split``: a fully deterministic function of its arguments.

    Keys: ``image`` uint8 (H, W, 3); ``mask`` bool (H, W), the pixels the person covers;
    ``smpl`` float32 (85,), the pose, betas and camera that drew it; ``text`` str;
    ``styles`` uint8 (9, S, S, 3) and ``style_present`` bool (9,) in the order of
    :data:`~upgpt_jax.data.synthetic.mannequin.PARTS`; ``identity`` int64.
    """
    ids = split_identity_ids(split, num_identities)
    identity_id = int(ids[index % len(ids)])
    identity = identity_from_id(identity_id, seed)
    rng = np.random.default_rng([seed, POSE_STREAM, SPLITS.index(split), index])
    smpl = sample_pose(rng, prior or default_prior(), identity.betas, image_size)
    return render_example(identity, identity_id, smpl, image_size, style_size, supersample)


def make_pair(identity_id: int, seed: int = 0, image_size: tuple[int, int] = (64, 48), style_size: int = 32,
              supersample: int = 1, prior: PosePrior | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{"source": example, "target": example}``: identity ``identity_id`` in two poses."""
    identity = identity_from_id(identity_id, seed)
    rng = np.random.default_rng([seed, PAIR_STREAM, identity_id])
    prior = prior or default_prior()
    poses = [sample_pose(rng, prior, identity.betas, image_size) for _ in range(2)]
    source, target = (render_example(identity, identity_id, smpl, image_size, style_size, supersample)
                      for smpl in poses)
    return {"source": source, "target": target}


def _make_chunk(args: tuple) -> list[dict[str, np.ndarray]]:
    indices, kwargs = args
    return [make_example(int(index), **kwargs) for index in indices]


def generate(num_examples: int, split: str = "train", image_size: tuple[int, int] = (64, 48), style_size: int = 32,
             seed: int = 0, num_identities: int = DEFAULT_NUM_IDENTITIES, supersample: int = 1, start: int = 0,
             workers: int = 1, chunk_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Examples ``start .. start + num_examples - 1`` of ``split``, in order.

    ``workers`` > 1 renders chunks in that many processes (spawned, so safe beside JAX);
    the output is identical whatever the worker count.
    """
    kwargs = dict(split=split, image_size=image_size, style_size=style_size, seed=seed,
                  num_identities=num_identities, supersample=supersample)
    indices = np.arange(start, start + num_examples)
    chunks = [(indices[i:i + chunk_size], kwargs) for i in range(0, num_examples, chunk_size)]
    if workers <= 1:
        for chunk in chunks:
            yield from _make_chunk(chunk)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for examples in pool.imap(_make_chunk, chunks):
            yield from examples
