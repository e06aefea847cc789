r"""Convert FrankMocap pickles to .npz files that load without unpickling.

  python -m upgpt_jax.smpl to-npz IN.p [IN2.p ...] --out DIR

Each ``IN.p`` becomes ``DIR/<IN stem>.npz`` holding the first person's arrays under their
FrankMocap names plus ``smpl``, the (85,) float32 vector UPGPT uses. Read them with
``np.load(path, allow_pickle=False)``. Pickles are read with the restricted unpickler; a
refused, corrupt or incomplete file is reported by name and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections.abc import Sequence

import numpy as np

from upgpt_jax.smpl.frankmocap import load_frankmocap_pickle, smpl_from_frankmocap


def convert_to_npz(pickle_path: str, out_dir: str) -> str:
    """Write ``out_dir/<stem>.npz`` for one pickle and return its path."""
    record = load_frankmocap_pickle(pickle_path)
    arrays = {}
    for key, value in record.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f"{pickle_path}: key '{key}' is not numeric ({type(value).__name__})")
        arrays[key] = array
    arrays["smpl"] = smpl_from_frankmocap(record, source=pickle_path)
    stem = os.path.splitext(os.path.basename(pickle_path))[0]
    out_path = os.path.join(out_dir, stem + ".npz")
    np.savez_compressed(out_path, **arrays)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upgpt_jax.smpl", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_npz = commands.add_parser("to-npz", help="convert FrankMocap pickles to .npz")
    to_npz.add_argument("inputs", nargs="+", help="FrankMocap .p files")
    to_npz.add_argument("--out", required=True, help="output directory (created if missing)")
    args = parser.parse_args(argv)

    stems: dict[str, str] = {}
    for path in args.inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            parser.error(f"{path} and {stems[stem]} would both write {stem}.npz; convert them separately")
        stems[stem] = path
    os.makedirs(args.out, exist_ok=True)
    failures = 0
    for path in args.inputs:
        try:
            print(f"{path} -> {convert_to_npz(path, args.out)}")
        except (OSError, ValueError, KeyError, pickle.UnpicklingError) as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
