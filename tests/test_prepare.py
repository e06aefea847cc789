"""`python -m upgpt_jax.data.prepare` builds either dataset and refuses bad arguments clearly."""
import json

import pytest
import tensorflow_datasets as tfds

from deepfashion_fixture import make_manual_dir, sample_paths
from upgpt_jax.data.prepare import main
from upgpt_jax.data.schema import check_record


def test_prepare_synthetic_people(tmp_path, capsys):
    data_path = main(["--dataset", "synthetic_people", "--data_dir", str(tmp_path), "--num_examples", "3",
                      "--workers", "1"])
    assert "train: 3 examples" in capsys.readouterr().out
    source = tfds.builder_from_directory(data_path).as_data_source("train")
    assert len(source) == 3
    check_record(source[0], (64, 48), 32, "prepared synthetic_people")


def test_prepare_deepfashion_skip_bad_reports(tmp_path, capsys):
    manual_dir = make_manual_dir(tmp_path / "manual")
    (manual_dir / "smpl_256" / (sample_paths()[1][:-len(".jpg")] + ".p")).write_bytes(b"\x80corrupt")
    data_path = main(["--dataset", "deepfashion_upgpt", "--data_dir", str(tmp_path / "tfds"),
                      "--manual_dir", str(manual_dir), "--skip_bad"])
    out = capsys.readouterr().out
    assert "skipped pairs" in out and sample_paths()[1][:-len(".jpg")] + ".p" in out
    report = json.loads((data_path / "skipped.json").read_text())
    assert report["num_skipped"] == 2  # the pickle is row 0's target and row 1's source
    check_record(tfds.builder_from_directory(data_path).as_data_source("train")[0], (64, 48), 32, "prepared")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "deepfashion_upgpt"], "needs --manual_dir"),
    (["--dataset", "deepfashion_upgpt", "--manual_dir", "/nonexistent/dir"], "not a directory"),
    (["--dataset", "synthetic_people", "--num_examples", "0"], "must be >= 1"),
    (["--dataset", "synthetic_people", "--workers", "0"], "--workers must be >= 1"),
    (["--dataset", "deepfashion_upgpt", "--manual_dir", ".", "--workers", "2"], "synthetic_people only"),
    (["--dataset", "synthetic_people", "--skip_bad"], "deepfashion_upgpt only"),
    (["--dataset", "synthetic_people", "--image_size", "32x32"], "invalid choice"),
])
def test_prepare_rejects_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        main(argv + ["--data_dir", str(tmp_path)])
    assert message in capsys.readouterr().err
