"""The TFDS builders write the schema's records and read back without TensorFlow."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from upgpt_jax.data.builders.deepfashion_upgpt import DeepfashionUpgpt
from upgpt_jax.data.builders.synthetic_people import SyntheticPeople
from deepfashion_fixture import TRAIN_ROWS, make_manual_dir, sample_paths
from upgpt_jax.config_base import STYLE_PARTS
from upgpt_jax.data.records import BadExampleError, identity_of, style_dirs
from upgpt_jax.data.schema import check_record
from upgpt_jax.data.synthetic import identity_split, split_identity_ids
from upgpt_jax.smpl.frankmocap import load_smpl_vector

REPO = Path(__file__).resolve().parent.parent


def _read_all(data_path, split):
    source = tfds.builder_from_directory(data_path).as_data_source(split)
    return [source[i] for i in range(len(source))]


def _build_deepfashion(manual_dir, data_dir, **kwargs):
    builder = DeepfashionUpgpt(data_dir=data_dir, **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


@pytest.mark.parametrize("config, image_size, style_size", [("64x48", (64, 48), 32), ("256x192", (256, 192), 224)])
def test_synthetic_people_records_and_identity_split(tmp_path, config, image_size, style_size):
    builder = SyntheticPeople(data_dir=tmp_path, config=config, num_examples=12, workers=1)
    builder.download_and_prepare()
    assert builder.info.file_format.value == "array_record"
    for split, expected in (("train", 12), ("test", 1)):
        records = _read_all(builder.data_path, split)
        assert len(records) == expected
        for record in records:
            check_record(record, image_size, style_size, f"synthetic_people/{split}")
            assert identity_split(int(record["identity"])) == split  # test identities are unseen in train
            assert set(np.unique(record["mask"])) <= {0, 255}
            assert record["id"].decode().startswith(f"{split}/")
    assert "tensorflow" not in sys.modules  # built and read without TensorFlow
    by_name = tfds.data_source(f"synthetic_people/{config}", data_dir=tmp_path, split="train", download=False)
    assert len(by_name) == 12


def test_synthetic_people_is_the_same_whatever_the_worker_count(tmp_path):
    # Compared decoded: TFDS's serialised bytes differ between processes (not record contents).
    splits = []
    for workers in (1, 2):  # 40 train pairs: two chunks, so two worker processes share the split
        builder = SyntheticPeople(data_dir=tmp_path / f"workers{workers}", num_examples=40, workers=workers)
        builder.download_and_prepare()
        splits.append({split: _read_all(builder.data_path, split) for split in ("train", "test")})
    for split in ("train", "test"):
        assert len(splits[0][split]) == len(splits[1][split]) == {"train": 40, "test": 4}[split]
        for serial, parallel in zip(splits[0][split], splits[1][split]):
            assert serial.keys() == parallel.keys()
            for name in serial:
                np.testing.assert_array_equal(serial[name], parallel[name], err_msg=f"{split} {name}")
    num_ids = len(split_identity_ids("train"))  # pair k < num_ids draws examples k and num_ids + k
    assert {record["id"].decode() for record in splits[1]["train"]} == {f"train/{k}->{num_ids + k}" for k in range(40)}


def test_deepfashion_records_match_the_files(tmp_path):
    manual_dir = make_manual_dir(tmp_path / "manual")
    builder = _build_deepfashion(manual_dir, tmp_path / "tfds")
    captions = json.loads((manual_dir / "captions.json").read_text())
    records = _read_all(builder.data_path, "train") + _read_all(builder.data_path, "test")
    assert len(records) == len(sample_paths())
    assert len(_read_all(builder.data_path, "train")) == TRAIN_ROWS
    for record in records:
        check_record(record, (64, 48), 32, "deepfashion_upgpt")
        source_path, target_path = record["id"].decode().split("->")
        expected = Image.open(manual_dir / "img_256" / target_path).resize((48, 64), Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(record["image"], np.asarray(expected))  # PNG is lossless
        np.testing.assert_array_equal(record["smpl"], load_smpl_vector(
            manual_dir / "smpl_256" / Path(target_path).with_suffix(".p")))
        assert record["text"].decode() == captions[target_path]
        assert record["identity"] == int(target_path.split("id_")[1].split("/")[0]) == identity_of(target_path)
        folder = style_dirs(manual_dir, source_path)[1]
        on_disk = [(folder / f"{part}.jpg").exists() for part in STYLE_PARTS]
        np.testing.assert_array_equal(record["style_present"], on_disk)
        assert 0 < sum(on_disk) < len(STYLE_PARTS)  # the fixture has present and missing parts
        assert not record["styles"][~record["style_present"]].any()  # a missing part is black
        assert record["mask"].any() and set(np.unique(record["mask"])) <= {0, 255}
    assert "tensorflow" not in sys.modules


def test_deepfashion_missing_file_names_it(tmp_path):
    manual_dir = make_manual_dir(tmp_path / "manual")
    missing = manual_dir / "smpl_256" / Path(sample_paths()[1]).with_suffix(".p")  # the first train pair's target
    missing.unlink()
    with pytest.raises(BadExampleError, match=str(missing)):
        _build_deepfashion(manual_dir, tmp_path / "tfds")


def test_deepfashion_skip_bad_skips_and_reports(tmp_path):
    manual_dir = make_manual_dir(tmp_path / "manual")
    paths = sample_paths()
    (manual_dir / "smpl_256" / (Path(paths[2]).with_suffix("").as_posix() + "_mask.png")).unlink()  # target of row 1
    (manual_dir / "img_256" / paths[0]).write_bytes(b"not a jpeg")  # source of row 0, target of row 4 (test)
    builder = _build_deepfashion(manual_dir, tmp_path / "tfds", skip_bad=True)
    assert builder.info.splits["train"].num_examples == TRAIN_ROWS - 2
    assert builder.info.splits["test"].num_examples == 1
    report = json.loads((Path(builder.data_dir) / "skipped.json").read_text())
    assert report["num_skipped"] == 3
    assert {entry["split"] for entry in report["skipped"]} == {"train", "test"}
    assert any("_mask.png" in entry["error"] for entry in report["skipped"])
    assert any(paths[0] in entry["error"] for entry in report["skipped"])


@pytest.mark.parametrize("name, builder_cls", [("synthetic_people", SyntheticPeople),
                                               ("deepfashion_upgpt", DeepfashionUpgpt)])
def test_data_folder_holds_the_tfds_build_entry_points(tmp_path, name, builder_cls):
    # How `tfds build data/<name>` finds its builder (the CLI itself needs TensorFlow to start).
    with tfds.core.utils.add_sys_path(REPO / "data"):
        entry_cls = tfds.core.community.builder_cls_from_module(f"{name}.{name}_dataset_builder")
    assert issubclass(entry_cls, builder_cls) and entry_cls.name == name
    assert tfds.builder_cls(name) is builder_cls  # the package's class keeps the registered name
    if builder_cls is DeepfashionUpgpt:  # cheap to build: the entry point writes what the package's class does
        builder = entry_cls(data_dir=tmp_path / "tfds")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=make_manual_dir(tmp_path / "manual")))
        assert builder.data_path == DeepfashionUpgpt(data_dir=tmp_path / "tfds").data_path
        assert builder.info.description == DeepfashionUpgpt(data_dir=tmp_path / "tfds").info.description != ""
        assert len(_read_all(builder.data_path, "train")) == TRAIN_ROWS
