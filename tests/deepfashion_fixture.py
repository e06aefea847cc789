"""A tiny DeepFashion manual directory in the original UPGPT layout, from ../shared/samples."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# The CI checkout has ../shared beside the project.
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "deepfashion"
# The three FrankMocap SMPL pickles of the original repository (untrusted input).
FRANKMOCAP_PICKLES = sorted((SAMPLES / "app_cache" / "pose").glob("pose_*/*.p"))
TRAIN_ROWS = 3  # pairs in the fixture's train CSV; the test CSV has 2


def sample_paths() -> list[str]:
    """``WOMEN-Skirts-id_00001883-01_1_front.jpg`` -> ``WOMEN/Skirts/id_00001883/01_1_front.jpg``."""
    return sorted("/".join(f.name.split("-")) for f in (SAMPLES / "fashion").glob("*.jpg"))


def make_manual_dir(root: Path) -> Path:
    """img_256 (edge-padded and resized to 256x192 as the original's resize_highres.py),
    smpl_256 pickles and masks (the three shared FrankMocap samples, reused), styles/,
    captions.json and pair CSVs."""
    paths = sample_paths()
    poses = sorted((SAMPLES / "app_cache" / "pose").glob("*/*.p"))
    for index, path in enumerate(paths):
        image = np.asarray(Image.open(SAMPLES / "fashion" / path.replace("/", "-")).convert("RGB"))
        padded = Image.fromarray(np.pad(image, ((0, 0), (38, 38), (0, 0)), mode="edge"))
        target = root / "img_256" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        padded.resize((192, 256), Image.Resampling.LANCZOS).save(target)
        pose = poses[index % len(poses)]
        stem = root / "smpl_256" / Path(path).with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pose, stem.with_suffix(".p"))
        shutil.copy(pose.with_name(pose.stem + "_mask.png"), stem.with_name(stem.name + "_mask.png"))
    shutil.copytree(SAMPLES / "styles", root / "styles")
    captions = {path: f"a woman wearing outfit number {i}" for i, path in enumerate(paths)}
    (root / "captions.json").write_text(json.dumps(captions))
    rows = [(paths[i], paths[(i + 1) % len(paths)]) for i in range(len(paths))]
    for name, split_rows in (("pairs-train-all.csv", rows[:TRAIN_ROWS]), ("pairs-test-all.csv", rows[TRAIN_ROWS:])):
        with open(root / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["from", "to", "multimodal", "segm"])
            writer.writerows([(a, b, True, False) for a, b in split_rows])
    return root
