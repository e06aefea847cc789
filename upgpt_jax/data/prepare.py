"""Prepare a TFDS dataset of upgpt-jax on disk (ArrayRecord; read back without TensorFlow).

    python -m upgpt_jax.data.prepare --dataset synthetic_people --data_dir DIR [--num_examples N] [--workers N]
    python -m upgpt_jax.data.prepare --dataset deepfashion_upgpt --data_dir DIR --manual_dir DF [--skip_bad]

``--image_size`` picks the config (64x48 with 32-pixel style crops, or 256x192 with 224).
``--data_dir`` may be a gs:// URL: the dataset is built in a temporary local folder and uploaded.
TFDS shows a progress bar per split. The builders are :mod:`upgpt_jax.data.builders`. Read the
result with ``tfds.builder_from_directory(PRINTED_DIR).as_data_source("train")``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Sequence

from upgpt_jax import storage
from upgpt_jax.cli_errors import fail

DATASETS = ("synthetic_people", "deepfashion_upgpt")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from upgpt_jax.data.records import RECORD_CONFIGS

    parser = argparse.ArgumentParser(prog="python -m upgpt_jax.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data_dir", required=True, help="where TFDS writes <dataset>/<config>/<version>/")
    parser.add_argument("--manual_dir", help="deepfashion_upgpt: the folder with img_256/, smpl_256/, styles/, "
                                             "captions.json and the pair CSVs")
    parser.add_argument("--num_examples", type=int, help="synthetic_people: train pairs (test gets a tenth)")
    parser.add_argument("--workers", type=int, help="synthetic_people: rendering processes (default: all cores)")
    parser.add_argument("--image_size", default="64x48", choices=[config.name for config in RECORD_CONFIGS])
    parser.add_argument("--train_pairs", default="pairs-train-all.csv", help="deepfashion_upgpt: train pair CSV")
    parser.add_argument("--test_pairs", default="pairs-test-all.csv", help="deepfashion_upgpt: test pair CSV")
    parser.add_argument("--skip_bad", action="store_true",
                        help="deepfashion_upgpt: skip pairs with missing/corrupt files and report them")
    args = parser.parse_args(argv)
    if args.dataset == "deepfashion_upgpt":
        if not args.manual_dir:
            parser.error("--dataset deepfashion_upgpt needs --manual_dir (the original UPGPT data layout)")
        if not Path(args.manual_dir).is_dir():
            parser.error(f"--manual_dir {args.manual_dir}: not a directory")
        if args.num_examples is not None:
            parser.error("--num_examples applies to synthetic_people only (DeepFashion pairs come from the CSVs)")
        if args.workers is not None:
            parser.error("--workers applies to synthetic_people only")
    elif args.manual_dir or args.skip_bad:
        parser.error("--manual_dir and --skip_bad apply to deepfashion_upgpt only")
    for flag in ("num_examples", "workers"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return args


def main(argv: Sequence[str] | None = None) -> storage.AnyPath:
    """Build the dataset; return (and print) the directory the splits were written to (a Path, or an
    etils.epath.Path for a gs:// --data_dir)."""
    args = _parse_args(argv)
    from upgpt_jax.data.records import BadExampleError

    try:
        return _prepare_in_bucket(args) if storage.is_url(args.data_dir) else _prepare(args)
    except BadExampleError as error:  # one bad pair: one line, and the way past it
        fail(f"{error}" + ("" if args.skip_bad else " (--skip_bad skips such pairs and lists them in skipped.json)"))
    except FileNotFoundError as error:  # captions.json, a pair CSV
        fail(str(error))


def _prepare_in_bucket(args: argparse.Namespace) -> storage.AnyPath:
    """TFDS writes ArrayRecord shards with array_record's writer, which opens local files only: build
    in a temporary folder, then upload it under the gs:// --data_dir (unless the dataset is there)."""
    remote = storage.path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="upgpt_prepare_") as local:
        built = _prepare(argparse.Namespace(**{**vars(args), "data_dir": local}))
        relative = built.relative_to(local)
        target = remote.joinpath(*relative.parts)
        if target.exists():
            print(f"{target} already exists; it is kept as is (use another --data_dir to rebuild)")
            return target
        storage.upload_tree(local, remote)
    print(f"uploaded to {target}")
    return target


def _prepare(args: argparse.Namespace) -> Path:
    """Build the dataset in the local args.data_dir; return the directory of its splits."""
    import tensorflow_datasets as tfds

    if args.dataset == "synthetic_people":
        from upgpt_jax.data.builders.synthetic_people import SyntheticPeople

        extra = {} if args.num_examples is None else {"num_examples": args.num_examples}
        builder = SyntheticPeople(data_dir=args.data_dir, config=args.image_size, workers=args.workers, **extra)
        prepare_kwargs = {}
    else:
        from upgpt_jax.data.builders.deepfashion_upgpt import DeepfashionUpgpt

        builder = DeepfashionUpgpt(data_dir=args.data_dir, config=args.image_size, skip_bad=args.skip_bad,
                                   pair_files={"train": args.train_pairs, "test": args.test_pairs})
        prepare_kwargs = {"download_config": tfds.download.DownloadConfig(manual_dir=args.manual_dir)}
    if builder.data_path.exists():
        print(f"{builder.data_path} already exists; it is kept as is (use another --data_dir to rebuild)")
    builder.download_and_prepare(**prepare_kwargs)
    for split, info in builder.info.splits.items():
        print(f"{split}: {info.num_examples} examples")
    if args.skip_bad:
        report = Path(builder.data_dir) / "skipped.json"
        if report.exists():
            print(f"skipped pairs ({report}):\n{json.dumps(json.loads(report.read_text()), indent=1)}")
    print(f"prepared {builder.data_path}")
    return Path(builder.data_path)


if __name__ == "__main__":
    main()
