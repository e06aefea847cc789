"""Time building synthetic_people examples (render, mask, styles, text), as a dataset build would.

    python benchmarks/synthetic_build.py                       # 10,000 at 64x48, 2 workers
    python benchmarks/synthetic_build.py --num_examples 1000 --image_size 256x192 --style_size 224

Reports the wall time of ``generate`` (worker start-up included), examples per second, and
the single-process cost per example. The examples are consumed, not stored.
"""
from __future__ import annotations

import argparse
import os
import time

from upgpt_jax.data.synthetic import generate, make_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_examples", type=int, default=10_000)
    parser.add_argument("--image_size", default="64x48", help="HxW")
    parser.add_argument("--style_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    image_size = tuple(int(n) for n in args.image_size.split("x"))

    start = time.perf_counter()
    for index in range(200):
        make_example(index, args.split, image_size=image_size, style_size=args.style_size)
    single = (time.perf_counter() - start) / 200

    start = time.perf_counter()
    count, mask_pixels = 0, 0
    for example in generate(args.num_examples, args.split, image_size=image_size, style_size=args.style_size,
                            workers=args.workers):
        count += 1
        mask_pixels += int(example["mask"].sum())
    elapsed = time.perf_counter() - start
    print(f"{count} examples at {image_size[0]}x{image_size[1]} (styles {args.style_size}) with "
          f"{args.workers} worker(s): {elapsed:.1f} s, {count / elapsed:.0f} examples/s; "
          f"one process: {single * 1e3:.1f} ms/example; mean person area {mask_pixels / count:.0f} px")


if __name__ == "__main__":
    main()
