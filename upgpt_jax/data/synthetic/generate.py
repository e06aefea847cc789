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
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from upgpt_jax.data.synthetic.identity import Identity, describe, sample_identity
from upgpt_jax.data.synthetic.pose_prior import PosePrior, default_prior, sample_pose
from upgpt_jax.data.synthetic.render import downsample, render_raster
from upgpt_jax.data.synthetic.styles import style_crops

SPLITS = ("train", "test")
TEST_EVERY = 10
DEFAULT_NUM_IDENTITIES = 1000
IDENTITY_STREAM, POSE_STREAM, PAIR_STREAM, TEXT_STREAM = 1, 2, 3, 4
T = TypeVar("T")


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


def uses_colour_free_text(pair_index: int, fraction: float, seed: int = 0) -> bool:
    """Whether pair ``pair_index`` takes the colour-free text (``describe_colour_free``) when a
    ``fraction`` of the pairs should: a draw from ``default_rng([seed, TEXT_STREAM, pair_index])``,
    so the choice is fixed per record (every epoch, every worker) and the images never change."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the colour-free text fraction must be in [0, 1], got {fraction}")
    return fraction > 0.0 and np.random.default_rng([seed, TEXT_STREAM, pair_index]).random() < fraction


def render_example(identity: Identity, identity_id: int, smpl: np.ndarray, image_size: tuple[int, int] = (64, 48),
                   style_size: int = 32, supersample: int = 1, with_styles: bool = True) -> dict[str, np.ndarray]:
    """One example dict for ``identity`` in pose ``smpl`` (see :func:`make_example` for the keys).

    ``with_styles=False`` leaves out ``styles`` and ``style_present``: a pair's target needs no
    crops, and cutting them saves about a quarter of an example's cost.
    """
    raster = render_raster(identity, smpl, image_size, supersample)
    image, mask = downsample(raster, supersample)
    example = {
        "image": image,
        "mask": mask,
        "smpl": np.asarray(smpl, np.float32),
        "text": describe(identity),
        "identity": np.int64(identity_id),
    }
    if with_styles:
        example["styles"], example["style_present"] = style_crops(raster, identity.background, style_size)
    return example


def make_example(index: int, split: str = "train", image_size: tuple[int, int] = (64, 48), style_size: int = 32,
                 seed: int = 0, num_identities: int = DEFAULT_NUM_IDENTITIES, supersample: int = 1,
                 prior: PosePrior | None = None, with_styles: bool = True) -> dict[str, np.ndarray]:
    """Example ``index`` of ``split``: a fully deterministic function of its arguments.

    Keys: ``image`` uint8 (H, W, 3); ``mask`` bool (H, W), the pixels the person covers;
    ``smpl`` float32 (85,), the pose, betas and camera that drew it; ``text`` str;
    ``styles`` uint8 (9, S, S, 3) and ``style_present`` bool (9,) in the order of
    :data:`~upgpt_jax.data.synthetic.mannequin.PARTS` (unless ``with_styles`` is False);
    ``identity`` int64.
    """
    ids = split_identity_ids(split, num_identities)
    identity_id = int(ids[index % len(ids)])
    identity = identity_from_id(identity_id, seed)
    rng = np.random.default_rng([seed, POSE_STREAM, SPLITS.index(split), index])
    smpl = sample_pose(rng, prior or default_prior(), identity.betas, image_size)
    return render_example(identity, identity_id, smpl, image_size, style_size, supersample, with_styles)


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


def _apply_to_chunk(task: tuple[Callable[[int], T], list[int]]) -> list[T]:
    function, indices = task
    return [function(index) for index in indices]


def map_in_chunks(function: Callable[[int], T], indices: Iterable[int], workers: int = 1,
                  chunk_size: int = 64) -> Iterator[T]:
    """``function(index)`` for every index, in order, computed in chunks of ``chunk_size``.

    ``workers`` > 1 maps the chunks in that many processes, spawned (not forked) so this is safe
    beside JAX's threads; a single chunk is not worth a worker's start-up (about a second) and
    runs here. ``function`` must pickle: a module-level function or a ``functools.partial`` of
    one. The results do not depend on the worker count.
    """
    indices = [int(index) for index in indices]
    chunks = [(function, indices[i:i + chunk_size]) for i in range(0, len(indices), chunk_size)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from _apply_to_chunk(chunk)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for results in pool.imap(_apply_to_chunk, chunks):
            yield from results


def generate(num_examples: int, split: str = "train", image_size: tuple[int, int] = (64, 48), style_size: int = 32,
             seed: int = 0, num_identities: int = DEFAULT_NUM_IDENTITIES, supersample: int = 1, start: int = 0,
             workers: int = 1, chunk_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Examples ``start .. start + num_examples - 1`` of ``split``, in order.

    ``workers`` > 1 renders chunks in that many processes (see :func:`map_in_chunks`); the
    output is identical whatever the worker count.
    """
    example = functools.partial(make_example, split=split, image_size=image_size, style_size=style_size, seed=seed,
                                num_identities=num_identities, supersample=supersample)
    yield from map_in_chunks(example, range(start, start + num_examples), workers, chunk_size)
