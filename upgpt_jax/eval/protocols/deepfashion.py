"""The DeepFashion protocols of UPGPT's paper, for users with the data set and trained/converted weights.

- `upgpt_pose_transfer`: the pair CSV `pairs-test-all.csv` (the original's test split,
  configs/deepfashion/bbox.yaml); each row draws the `to` image's person (pose, person mask,
  caption) in the `from` image's style crops; SSIM, MS-SSIM, LPIPS and FID against the `to` image.
- `upgpt_text_pose`: the multimodal test set `mm-test-all.csv` (1,149 rows, `from` == `to`, the
  original's lowres.yaml test split); the same conditions, so caption + pose + the image's own
  style crops (the original's loader always fed the `from` image's crops); FID headline.

With `--samples_dir` the samples already exist (the original's results/samples, or ours) and
only the evaluation runs; otherwise the model is loaded and every row sampled with the sampling package's
Sampler, noise seed `--seed` + row index (a `--num_examples` run gives the full run's first images).
Like the original's test step, ground truths go to OUT/gt and samples to OUT/samples, both
centre-cropped 256x176 (from 256x192) and saved as JPEG (PIL's default quality) under the
original's names (`fashionWOMENSkirtsid0000188301_1front___fashion...`), so its
scripts/eval_metrics.py can read the folders too. The ground truth also repeats the original's
pixel round trip (`original_pixels`). Then `evaluate_folders` computes the metrics.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from upgpt_jax import storage
from upgpt_jax.data.records import BadExampleError, deepfashion_record, load_captions, open_rgb, read_pairs
from upgpt_jax.eval.folders import (ORIGINAL_CROP, center_crop, evaluate_folders, image_files, load_metric_networks,
                                    read_cropped)
from upgpt_jax.eval.protocols import EvalOptions, EvalResult, ProtocolError, load_model, register, sampling_settings

PAIR_FILES = {"upgpt_pose_transfer": "pairs-test-all.csv", "upgpt_text_pose": "mm-test-all.csv"}
GROUPS = {"upgpt_pose_transfer": "pose_transfer", "upgpt_text_pose": "text_pose"}
ORIGINAL_IMAGE_SIZE = (256, 192)  # img_256 files and the released model's images
IMAGE_DIR = "img_256"
WORST_ROWS = 8
RECORDS_PER_SAMPLER_CALL = 4  # sampler batches of records read (and held) at a time
METRIC_BATCH = 50  # images per metric batch when --batch_size is not given (the original's default 100)
# The original's test step (ldm/models/diffusion/ddpm.py test_step / log_images): for reference only.
ORIGINAL_SAMPLING = dict(method="ddim", num_steps=200, eta=1.0, guidance="text 3.0 (unconditional_guidance_scale)")


def original_name(source: str, target: str) -> str:
    """The original's `get_name(from, to)`: `fashion<from>___fashion<to>` with each path's last
    '_' and the '_' of 'id_' dropped and '/' removed ('WOMEN/Skirts/id_00001883/01_1_front.jpg'
    -> 'fashionWOMENSkirtsid0000188301_1front')."""
    def convert(path: str) -> str:
        folder, file_name = os.path.split(path)
        cut = file_name.rfind("_")
        joined = folder + "/" + file_name[:cut] + file_name[cut + 1:]
        return "fashion" + joined.split(".jpg")[0].replace("id_", "id").replace("/", "")

    return convert(source) + "___" + convert(target)


def original_pixels(image: np.ndarray) -> np.ndarray:
    """uint8 pixels after the original's float32 round trip of ground truths: ToTensor (/255),
    x*2-1, then (x+1)/2 and ToPILImage's mul(255).byte(), which truncates (63 of the 256 levels
    come back one lower). Its ground-truth files hold these values."""
    x = image.astype(np.float32) / np.float32(255.0)
    x = x * np.float32(2.0) - np.float32(1.0)
    x = (x + np.float32(1.0)) / np.float32(2.0)
    return (x * np.float32(255.0)).astype(np.uint8)


def crop_for(image_size: tuple[int, int] | None) -> tuple[tuple[int, int], str | None]:
    """(crop, note): 256x176 for 256x192 images (or the files' own size); other model sizes lose
    the same fraction of width (the padding the 256x192 layout added to 256x176 photographs)."""
    if image_size is None or tuple(image_size) == ORIGINAL_IMAGE_SIZE:
        return ORIGINAL_CROP, None
    height, width = (int(side) for side in image_size)
    crop = (height, int(round(width * ORIGINAL_CROP[1] / ORIGINAL_IMAGE_SIZE[1])))
    return crop, (f"the model's images are {height}x{width}, not {ORIGINAL_IMAGE_SIZE[0]}x{ORIGINAL_IMAGE_SIZE[1]}: "
                  f"cropped to {crop[0]}x{crop[1]} instead of {ORIGINAL_CROP[0]}x{ORIGINAL_CROP[1]} "
                  "(numbers not comparable with the paper's)")


def find_pair_file(data_dir: Path, file_name: str) -> Path:
    """`file_name` in the data folder or in its `data/deepfashion/` (the original repository's place)."""
    candidates = [data_dir / file_name, data_dir / "data" / "deepfashion" / file_name]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise ProtocolError(f"pair file {file_name} not found; looked for {', '.join(map(str, candidates))} "
                            "(it ships in the original repository's data/deepfashion/)")
    return found


def _data_dir(options: EvalOptions) -> Path:
    if not options.data_dir:
        raise ProtocolError("give --data_dir: DeepFashion in the original UPGPT layout (img_256/, smpl_256/, "
                            "styles/, captions.json and the pair CSVs)")
    data_dir = Path(options.data_dir)
    if not (data_dir / IMAGE_DIR).is_dir():
        raise ProtocolError(f"--data_dir {data_dir} has no {IMAGE_DIR}/ folder: these protocols read DeepFashion "
                            "in the original UPGPT layout (img_256/, smpl_256/, styles/, captions.json), not a "
                            "prepared TFDS folder")
    return data_dir


def _read_image(data_dir: Path, path: str, size: tuple[int, int] | None) -> np.ndarray:
    """An img_256 image as uint8 (H, W, 3): at `size` (resized as the data records are) or as stored."""
    file = data_dir / IMAGE_DIR / path
    try:
        if size is not None:
            return open_rgb(file, tuple(size), Image.Resampling.LANCZOS)
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (BadExampleError, OSError) as error:
        raise ProtocolError(f"{file}: cannot read image ({error})") from None


def _cropped(image: np.ndarray, crop: tuple[int, int], what: str) -> np.ndarray:
    try:
        return center_crop(image, crop)
    except ValueError as error:
        raise ProtocolError(f"{what}: {error}") from None


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    storage.save_image(image, path)  # PIL's default JPEG quality, as the original's ToPILImage().save


def _write_ground_truth(name: str, image: np.ndarray, gt_dir: Path, crop: tuple[int, int]) -> None:
    _save_jpeg(original_pixels(_cropped(image, crop, f"ground truth of {name}")), gt_dir / f"{name}.jpg")


def _generate(loaded: Any, options: EvalOptions, data_dir: Path, pairs: Sequence[tuple[str, str]],
              names: Sequence[str], out_dirs: tuple[Path, Path], crop: tuple[int, int]) -> dict[str, Any]:
    """Sample every pair into samples/ and write its ground truth into gt/; returns the settings used."""
    from upgpt_jax.sampling import Sampler
    from upgpt_jax.sampling.conditions import person_from_record

    gt_dir, sample_dir = out_dirs
    settings = sampling_settings(loaded, options)
    sampler = Sampler(loaded, settings)
    model = loaded.config.model
    size, style_size = tuple(int(side) for side in model.image_size), int(model.clip.image_size)
    try:
        captions = load_captions(data_dir)
    except (OSError, ValueError) as error:
        raise ProtocolError(str(error)) from None
    step = sampler.batch_size * RECORDS_PER_SAMPLER_CALL
    for start in tqdm(range(0, len(pairs), step), desc="sample", unit="chunk", disable=len(pairs) <= step):
        rows = range(start, min(start + step, len(pairs)))
        try:
            records = [deepfashion_record(data_dir, *pairs[row], captions, size, style_size) for row in rows]
        except BadExampleError as error:
            raise ProtocolError(str(error)) from None
        people = [person_from_record(record, "target", source=names[row]) for record, row in zip(records, rows)]
        images = sampler(people, seeds=[options.seed + row for row in rows])
        for row, record, image in zip(rows, records, images):
            _write_ground_truth(names[row], np.asarray(record["image"]), gt_dir, crop)
            _save_jpeg(_cropped(image, crop, f"sample {names[row]}"), sample_dir / f"{names[row]}.jpg")
    return dict(sampling=dataclasses.asdict(settings), checkpoint=loaded.source)


def _unique_rows(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Rows in order, repeats dropped (a repeated row would write the same file twice)."""
    return list(dict.fromkeys(pairs))


def evaluate_deepfashion(options: EvalOptions, protocol: str) -> EvalResult:
    """Run `protocol` (a key of PAIR_FILES) as the module docstring describes."""
    data_dir = _data_dir(options)
    pair_file = find_pair_file(data_dir, PAIR_FILES[protocol])
    try:
        all_rows = read_pairs(pair_file)
    except (OSError, ValueError) as error:
        raise ProtocolError(str(error)) from None
    pairs = _unique_rows(all_rows)
    if options.num_examples is not None:
        if options.num_examples < 1:
            raise ProtocolError(f"--num_examples must be >= 1, got {options.num_examples}")
        pairs = pairs[:options.num_examples]
    if not pairs:
        raise ProtocolError(f"{pair_file}: no rows")
    names = [original_name(*pair) for pair in pairs]
    lpips, inception, _ = load_metric_networks(options.lpips_dir, options.inception_path)  # bad paths fail now
    gt_dir = storage.path(options.out_dir) / "gt"  # --out may be gs://
    gt_dir.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = dict(
        pair_file=str(pair_file), num_examples=len(pairs),
        repeated_rows_dropped=len(all_rows) - len(_unique_rows(all_rows)),
        ground_truth=str(gt_dir), original_sampling=ORIGINAL_SAMPLING,
        conditions="the 'to' image's caption, SMPL pose and person mask (<stem>_mask.png silhouette); the 'from' "
                   "image's style crops (the original's loader; its released bbox.yaml model used the mask's "
                   "bounding box instead)")
    if options.samples_dir:
        image_size = tuple(options.config.model.image_size) if options.config is not None else None
        crop, crop_note = crop_for(image_size)
        for name, (_, target) in zip(names, pairs):
            _write_ground_truth(name, _read_image(data_dir, target, image_size), gt_dir, crop)
        sample_dir = storage.path(options.samples_dir)
    else:
        loaded = load_model(options)
        image_size = tuple(int(side) for side in loaded.config.model.image_size)
        crop, crop_note = crop_for(image_size)
        sample_dir = storage.path(options.out_dir) / "samples"
        sample_dir.mkdir(parents=True, exist_ok=True)
        details.update(_generate(loaded, options, data_dir, pairs, names, (gt_dir, sample_dir), crop))
    details.update(samples=str(sample_dir), crop=list(crop), examples=names)
    if crop_note:
        details["crop_note"] = crop_note
    folder = evaluate_folders(gt_dir, sample_dir, crop, lpips=lpips, inception=inception,
                              batch_size=options.batch_size or METRIC_BATCH, names=names)
    details["notes"] = folder.notes
    group = GROUPS[protocol]
    worst = _worst_rows(folder, dict(zip(names, pairs)), data_dir, image_size, crop, gt_dir, sample_dir)
    return EvalResult(protocol=protocol, metrics={f"{group}/{key}": value for key, value in folder.metrics.items()},
                      per_example={f"{group}/{key}": values.tolist() for key, values in folder.per_image.items()},
                      worst=worst, details=details, worst_columns=["source", "ground truth", "sample"])


def _worst_rows(folder: Any, pairs: dict[str, tuple[str, str]], data_dir: Path, image_size: tuple[int, int] | None,
                crop: tuple[int, int], gt_dir: Path, sample_dir: Path) -> list[tuple[str, list[np.ndarray]]]:
    """[source, ground truth, sample] of the lowest-SSIM examples, worst first."""
    samples, truths = image_files(sample_dir), image_files(gt_dir)
    rows = []
    for index in np.argsort(folder.per_image["ssim"], kind="stable")[:WORST_ROWS]:
        name = folder.names[index]
        source = _cropped(_read_image(data_dir, pairs[name][0], image_size), crop, f"source of {name}")
        images = [source, read_cropped(truths[name], crop), read_cropped(samples[name], crop)]
        rows.append((f"{name}\nSSIM {folder.per_image['ssim'][index]:.3f}", images))
    return rows


@register("upgpt_pose_transfer")
def upgpt_pose_transfer(options: EvalOptions) -> EvalResult:
    return evaluate_deepfashion(options, "upgpt_pose_transfer")


@register("upgpt_text_pose")
def upgpt_text_pose(options: EvalOptions) -> EvalResult:
    return evaluate_deepfashion(options, "upgpt_text_pose")
