"""Examples per second of the trainer's input pipeline (upgpt_jax.train.data.training_pipeline) by worker count.

    python -m upgpt_jax.data.prepare --dataset synthetic_people --data_dir /tmp/tfds --num_examples 400 --workers 1
    python benchmarks/input_pipeline.py --data_dir /tmp/tfds [--workers 0,1,2] [--batch 8] [--repeats 2]

The synthetic_tiny config (64x48 images, 32-pixel style crops) and the trainer's pixel transform
(normalise, tokenise, resize the mask, CLIP-normalise the crops), on two sources: `synthetic`,
records rendered in memory (SyntheticPairs, data_dir empty) with more records than a run reads, so
the memo never answers and every record is rendered; and, with `--data_dir`, `prepared`: a TFDS
ArrayRecord folder (PNG decoding). For each `data.num_workers`: the start-up (until the first
batch; worker processes spawn and import the package), then examples/s over `--batches` batches
after `--warmup` more (which drain what was read ahead during the start-up), `--repeats` times.
The last line says whether TensorFlow was imported (neither grain nor tfds' ArrayRecord reading
needs it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # host-side work only: no accelerator to open
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from configs import synthetic_tiny  # noqa: E402
from upgpt_jax.train.data import training_pipeline  # noqa: E402


def measure(config, warmup: int, num_batches: int) -> tuple[float, float]:
    """(seconds to the first batch, examples/s over `num_batches` after `warmup` more)."""
    start = time.perf_counter()
    with training_pipeline(config) as pipeline:
        next(pipeline)
        first = time.perf_counter()
        for _ in range(warmup):  # what was read ahead while the first batch was awaited is drained
            next(pipeline)
        timed = time.perf_counter()
        for _ in range(num_batches):
            next(pipeline)
        end = time.perf_counter()
    return first - start, num_batches * config.train.batch_size / (end - timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="", help="a prepared synthetic_people TFDS folder (adds `prepared`)")
    parser.add_argument("--workers", default="0,1,2", help="data.num_workers values, comma-separated")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches after the first")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    sources = {"synthetic": ""} | ({"prepared": args.data_dir} if args.data_dir else {})
    print("| source | num_workers | start-up (s) | examples/s (each run) | examples/s (median) |")
    print("|---|---|---|---|---|")
    for name, data_dir in sources.items():
        for num_workers in (int(count) for count in args.workers.split(",")):
            config = synthetic_tiny.get_config()
            config.train.batch_size = args.batch
            config.data.update(data_dir=data_dir, num_workers=num_workers,  # no record read twice in a run:
                               num_examples=2 * (1 + args.warmup + args.batches) * args.batch)  # all rendered
            runs = [measure(config, args.warmup, args.batches) for _ in range(args.repeats)]
            startup, rates = max(run[0] for run in runs), [run[1] for run in runs]
            print(f"| {name} | {num_workers} | {startup:.1f} | {' / '.join(f'{rate:.0f}' for rate in rates)} | "
                  f"{statistics.median(rates):.0f} |", flush=True)
    print(f"tensorflow imported: {'tensorflow' in sys.modules}")


if __name__ == "__main__":
    main()
