"""Time building synthetic_people: the raw generator, then the TFDS build, as ``prepare`` runs it.

    python benchmarks/synthetic_build.py                       # 10,000 at 64x48, all cores
    python benchmarks/synthetic_build.py --num_examples 1000 --image_size 256x192 --workers 1

Generator: the wall time of ``generate`` (worker start-up included) for ``--num_examples``
examples, examples per second, and the single-process cost per example; the examples are
consumed, not stored. TFDS build: ``SyntheticPeople(num_examples=N).download_and_prepare()``
into a temporary folder, i.e. N train pairs and N // 10 test pairs, each pair two renders,
PNG encoding and ArrayRecord writing. ``--skip`` leaves one of the two out.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from upgpt_jax.data.records import RECORD_CONFIGS
from upgpt_jax.data.synthetic import generate, make_example



def time_generator(num_examples: int, image_size: tuple[int, int], style_size: int, workers: int) -> None:
    start = time.perf_counter()
    for index in range(200):
        make_example(index, "train", image_size=image_size, style_size=style_size)
    single = (time.perf_counter() - start) / 200

    start = time.perf_counter()
    count, mask_pixels = 0, 0
    for example in generate(num_examples, "train", image_size=image_size, style_size=style_size, workers=workers):
        count += 1
        mask_pixels += int(example["mask"].sum())
    elapsed = time.perf_counter() - start
    print(f"generator: {count} examples at {image_size[0]}x{image_size[1]} (styles {style_size}) with "
          f"{workers} worker(s): {elapsed:.1f} s, {count / elapsed:.0f} examples/s; "
          f"one process: {single * 1e3:.1f} ms/example; mean person area {mask_pixels / count:.0f} px")


def time_tfds_build(num_examples: int, config: str, workers: int) -> None:
    from upgpt_jax.data.builders.synthetic_people import SyntheticPeople

    with tempfile.TemporaryDirectory() as data_dir:
        start = time.perf_counter()
        builder = SyntheticPeople(data_dir=data_dir, config=config, num_examples=num_examples, workers=workers)
        builder.download_and_prepare()
        elapsed = time.perf_counter() - start
    pairs = sum(split.num_examples for split in builder.info.splits.values())
    print(f"TFDS build: {pairs} pairs ({num_examples} train + {pairs - num_examples} test, {2 * pairs} renders) "
          f"at {config} with {workers} worker(s): {elapsed:.1f} s, {pairs / elapsed:.0f} pairs/s, "
          f"{builder.info.dataset_size} on disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_examples", type=int, default=10_000)
    configs = {config.name: config for config in RECORD_CONFIGS}
    parser.add_argument("--image_size", default="64x48", choices=sorted(configs), help="the builder config")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip", choices=("generator", "tfds"), help="time only the other one")
    args = parser.parse_args()
    config = configs[args.image_size]
    if args.skip != "generator":
        time_generator(args.num_examples, config.image_size, config.style_size, args.workers)
    if args.skip != "tfds":
        time_tfds_build(args.num_examples, args.image_size, args.workers)


if __name__ == "__main__":
    main()
