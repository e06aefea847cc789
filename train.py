"""Train UPGPT's diffusion stage: `python train.py --config configs/synthetic_tiny.py --workdir DIR`.

Any config field can be overridden (`--config.train.num_steps=2000`). Re-running the same command
with the same workdir resumes from the newest checkpoint; a larger num_steps trains on. XLA
compilations are cached in $JAX_COMPILATION_CACHE_DIR (default ~/.cache/upgpt_jax/jax_cache), so a
restart does not compile again. Exits 0 when done or preempted (SIGTERM: checkpoint saved), 1 when
training diverged (non-finite losses; the last good checkpoint is kept).
"""
import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])

DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "upgpt_jax" / "jax_cache"


def enable_compilation_cache() -> None:
    """Persist every compilation (min compile time 0), unless the environment chose otherwise."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(DEFAULT_CACHE)))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
        logging.set_verbosity(logging.WARNING)
    enable_compilation_cache()
    from upgpt_jax.train.trainer import train

    result = train(flags.FLAGS.config, flags.FLAGS.workdir)
    print(f"{result.stop_reason} at step {int(result.state.step)}; last checkpoint: {result.last_checkpoint}")
    if result.stop_reason == "diverged":
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
