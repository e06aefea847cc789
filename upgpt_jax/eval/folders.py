"""Paired-folder metrics as UPGPT's scripts/eval_metrics.py computes them, in JAX.

The original evaluated a folder of ground-truth images against a folder of samples with the same
file names (its test step wrote both, already centre-cropped to 256x176):
- SSIM and MS-SSIM per image with pytorch_msssim (`data_range=1`, [0, 1] images from ToTensor);
- LPIPS per image with `lpips.LPIPS(net='vgg')(sample, gt)` on those [0, 1] images WITHOUT
  `normalize=True` (see upgpt_jax/eval/lpips.py: a compressed input range, so its numbers are not
  the correctly scaled LPIPS). Both values are computed here: `lpips` (correct, the images mapped
  to [-1, 1]) and `lpips_original_quirk` (the original's call, comparable with the paper);
- FID with `python -m pytorch_fid GT_DIR SAMPLE_DIR` over all images of the two folders.
Averages are means over images. KID (torch-fidelity's) is added over the same Inception features.

Files are matched by name without extension (`a.jpg` in one folder, `a.png` in the other match);
a name present in only one folder is an error (the original printed a count and went on). Every
image is centre-cropped to `crop` as torchvision's CenterCrop does (a no-op on images of that
size, which is what the original's folders hold). Images stream through in batches, so folders of
thousands of images need memory for one batch (and the 2048-d features, for KID).
LPIPS and FID/KID are skipped, with a note, when their weights are not given; nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from upgpt_jax import storage
from upgpt_jax.eval.fid import FeatureStatistics, frechet_distance, kernel_inception_distance
from upgpt_jax.eval.image_metrics import ms_ssim, ssim
from upgpt_jax.eval.inception import inception_features, load_fid_inception
from upgpt_jax.eval.lpips import load_lpips_from_folder
from upgpt_jax.eval.placement import eval_mesh, padded_size, place_batch, replicate
from upgpt_jax.eval.protocols import ProtocolError

ORIGINAL_CROP = (256, 176)  # (height, width): the original's test-step crop_size
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # the original's Loader reads *.jpg and *.png
MS_SSIM_MIN_SIDE = 160  # pytorch_msssim: the smaller side must exceed (11 - 1) * 2**4
KID_SUBSET_SIZE = 1000  # torch-fidelity's default
LPIPS_NET = "vgg"  # the original's lpips.LPIPS(net='vgg')
_LISTED = 5  # names shown in a missing/extra-files error

WeightsSpec = Any  # a path (folder or file), a loaded (module, params) pair, or None


@dataclasses.dataclass
class FolderMetrics:
    """`names`: the matched image names (no extension), in order; `per_image`: metric -> (N,) array
    in that order; `metrics`: the averages and the set metrics (fid, kid, kid_std); `notes`: what
    was skipped or approximated, and why."""

    names: list[str]
    per_image: dict[str, np.ndarray]
    metrics: dict[str, float]
    notes: dict[str, str]


def center_crop_offsets(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop: int(round((H - h) / 2.0)) and the same for W
    (Python's round: halves go to the even integer)."""
    (height, width), (crop_height, crop_width) = size, crop
    if crop_height > height or crop_width > width:
        raise ValueError(f"cannot centre-crop a {height}x{width} image to {crop_height}x{crop_width}")
    return int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))


def center_crop(image: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """The (h, w) centre of an (H, W, ...) image, as torchvision's CenterCrop (no padding: a
    smaller image is an error)."""
    top, left = center_crop_offsets(image.shape[:2], crop)
    return image[top:top + crop[0], left:left + crop[1]]


def image_files(folder: str | os.PathLike) -> dict[str, Path]:
    """{name without extension: path} of the images directly in `folder` (not recursive; local or gs://)."""
    folder = storage.path(folder)
    if not folder.is_dir():
        raise ProtocolError(f"{folder}: not a directory (expected {'/'.join(IMAGE_SUFFIXES)} images)")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise ProtocolError(f"{folder}: two images named {path.stem!r} ({files[path.stem].name}, {path.name})")
            files[path.stem] = path
    return files


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_LISTED])
    return shown + (f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def match_files(gt_dir: str | os.PathLike, sample_dir: str | os.PathLike,
                names: Sequence[str] | None = None) -> list[tuple[str, Path, Path]]:
    """(name, ground-truth path, sample path) per image. With `names`, exactly those (others in
    the folders are ignored); without, every image, and both folders must hold the same names."""
    truths, samples = image_files(gt_dir), image_files(sample_dir)
    wanted = list(names) if names is not None else sorted(truths)
    for folder, found, other in ((gt_dir, truths, "wanted"), (sample_dir, samples, f"in {gt_dir}")):
        missing = [name for name in wanted if name not in found]
        if missing:
            raise ProtocolError(f"{folder} lacks {len(missing)} of the {len(wanted)} images {other}: "
                                f"{_listing(missing)}")
    if names is None:
        extra = sorted(set(samples) - set(truths))
        if extra:
            raise ProtocolError(f"{sample_dir} holds {len(extra)} images with no ground truth in {gt_dir}: "
                                f"{_listing(extra)}")
    if not wanted:
        raise ProtocolError(f"{gt_dir}: no images to evaluate")
    return [(name, truths[name], samples[name]) for name in wanted]


def read_cropped(path: Path, crop: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) centre crop of an image file."""
    try:
        with path.open("rb") as file, Image.open(file) as image:  # a local or a gs:// file
            pixels = np.asarray(image.convert("RGB"), np.uint8)
    except OSError as error:
        raise ProtocolError(f"{path}: cannot read image ({error})") from error
    try:
        return center_crop(pixels, crop)
    except ValueError as error:
        raise ProtocolError(f"{path}: {error}") from None


@functools.partial(jax.jit, static_argnames=("with_ms_ssim",))
def _structural_scores(samples: jax.Array, truths: jax.Array, with_ms_ssim: bool) -> dict[str, jax.Array]:
    scores = {"ssim": ssim(samples, truths, data_range=1.0)}
    if with_ms_ssim:
        scores["ms_ssim"] = ms_ssim(samples, truths, data_range=1.0)
    return scores


@functools.partial(jax.jit, static_argnums=0)
def _lpips_scores(module: Any, params: Any, samples: jax.Array, truths: jax.Array) -> dict[str, jax.Array]:
    def distance(from_unit_range: bool) -> jax.Array:
        return module.apply({"params": params}, samples, truths, from_unit_range)

    return {"lpips": distance(True), "lpips_original_quirk": distance(False)}


def _load(spec: WeightsSpec, loader: Any, what: str, flag: str, notes: dict[str, str], key: str) -> Any:
    if spec is None:
        notes[key] = f"skipped: no {what} weights given ({flag}); nothing is downloaded"
        return None
    if isinstance(spec, (tuple, list)):
        return tuple(spec)
    try:
        return loader(spec)
    except (OSError, ValueError) as error:  # missing file, wrong tensors: the loaders name the file
        raise ProtocolError(f"{flag} {spec}: {error}") from None


def load_metric_networks(lpips: WeightsSpec, inception: WeightsSpec) -> tuple[Any, Any, dict[str, str]]:
    """((LPIPS module, params) or None, (Inception module, params) or None, skip notes). Loaded
    pairs pass through; protocols call this before sampling so that a bad path fails early."""
    notes: dict[str, str] = {}
    lpips_net = _load(lpips, lambda folder: load_lpips_from_folder(folder, LPIPS_NET), "LPIPS (vgg)",
                      "--lpips_dir", notes, "lpips")
    inception_net = _load(inception, load_fid_inception, "FID Inception", "--inception", notes, "fid")
    return lpips_net, inception_net, notes


def evaluate_folders(gt_dir: str | os.PathLike, sample_dir: str | os.PathLike,
                     crop: tuple[int, int] = ORIGINAL_CROP, lpips: WeightsSpec = None, inception: WeightsSpec = None,
                     batch_size: int = 50, names: Sequence[str] | None = None, mesh: Mesh | None = None,
                     rules: Any = None) -> FolderMetrics:
    """The original's metrics of `sample_dir` against `gt_dir` (module docstring).

    `lpips`: a folder for `load_lpips_from_folder(folder, "vgg")` or a loaded (module, params);
    `inception`: pytorch-fid's weight file (or a folder holding it) or a loaded (module, params)
    (`load_fid_inception`'s, or any module mapping [0, 1] NHWC images to (B, D) features);
    `names`: evaluate only these images (e.g. the first N of a protocol), else all of them;
    `mesh`, `rules`: where the batches run (eval.placement.eval_mesh: default every device).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    crop = (int(crop[0]), int(crop[1]))
    files = match_files(gt_dir, sample_dir, names)
    lpips_net, inception_net, notes = load_metric_networks(lpips, inception)
    with_ms_ssim = min(crop) > MS_SSIM_MIN_SIDE
    if not with_ms_ssim:
        notes["ms_ssim"] = (f"skipped: the {crop[0]}x{crop[1]} crop is too small (MS-SSIM needs a side > "
                            f"{MS_SSIM_MIN_SIDE})")
    batch = min(batch_size, len(files))
    mesh, rules = eval_mesh(mesh, rules)
    size = padded_size(batch, mesh, rules)
    lpips_net = None if lpips_net is None else (lpips_net[0], replicate(lpips_net[1], mesh))
    inception_net = None if inception_net is None else (inception_net[0], replicate(inception_net[1], mesh))
    per_image: dict[str, list[np.ndarray]] = {}
    features: dict[str, list[np.ndarray]] = {"gt": [], "samples": []}
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        truths = np.stack([read_cropped(gt, crop) for _, gt, _ in chunk]).astype(np.float32) / 255.0
        samples = np.stack([read_cropped(sample, crop) for _, _, sample in chunk]).astype(np.float32) / 255.0
        placed = place_batch({"truths": truths, "samples": samples}, size, mesh, rules)
        truths, samples = placed["truths"], placed["samples"]
        scores = dict(_structural_scores(samples, truths, with_ms_ssim))
        if lpips_net is not None:
            scores.update(_lpips_scores(lpips_net[0], lpips_net[1], samples, truths))
        for key, value in scores.items():
            per_image.setdefault(key, []).append(np.asarray(value, np.float64)[:len(chunk)])
        if inception_net is not None:
            for side, images in (("gt", truths), ("samples", samples)):
                features[side].append(np.asarray(inception_features(*inception_net, images))[:len(chunk)])
    per_image_arrays = {key: np.concatenate(values) for key, values in per_image.items()}
    metrics = {key: float(values.mean()) for key, values in per_image_arrays.items()}
    if inception_net is not None:
        metrics.update(_set_metrics(np.concatenate(features["gt"]), np.concatenate(features["samples"]), notes))
    return FolderMetrics([name for name, _, _ in files], per_image_arrays, metrics, notes)


def _set_metrics(truths: np.ndarray, samples: np.ndarray, notes: dict[str, str]) -> dict[str, float]:
    """FID (as pytorch-fid, gt first) and KID (torch-fidelity's, samples as its input1) of two
    (N, D) feature sets (D = 2048 for the FID Inception)."""
    if len(truths) < 2:
        notes["fid"] = "skipped: FID and KID need at least 2 images"
        return {}
    statistics = [FeatureStatistics(truths.shape[1]).update(side) for side in (truths, samples)]
    metrics = {"fid": frechet_distance(statistics[0].mu, statistics[0].sigma, statistics[1].mu, statistics[1].sigma)}
    subset = min(KID_SUBSET_SIZE, len(truths))
    if subset < KID_SUBSET_SIZE:
        notes["kid"] = (f"subsets of {subset} images (torch-fidelity's default is {KID_SUBSET_SIZE}): "
                        "compare KID only between runs with the same number of images")
    if len(truths) < truths.shape[1]:
        notes["fid_sample_size"] = (f"{len(truths)} images, fewer than the {truths.shape[1]} feature dimensions: "
                                    "the covariances are singular and FID is biased upwards (compare runs of equal "
                                    "size only)")
    metrics["kid"], metrics["kid_std"] = kernel_inception_distance(samples, truths, subset_size=subset)
    return metrics
