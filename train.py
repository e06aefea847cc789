"""Train UPGPT's diffusion stage: `python train.py --config configs/synthetic_tiny.py --workdir DIR`.

Any config field can be overridden (`--config.train.num_steps=2000`). Re-running the same command
with the same workdir resumes from the newest checkpoint; a larger num_steps trains on. XLA
compilations are cached in $JAX_COMPILATION_CACHE_DIR (default ~/.cache/upgpt_jax/jax_cache), so a
restart does not compile again. Exits 0 when done or preempted (SIGTERM: checkpoint saved), 1 when
training diverged (skipped steps in a row; the last good checkpoint is kept), when a checkpoint save
failed (the lost steps are named) or no checkpoint restores, and 2 for a bad setting or a workdir
another job holds; every error is one line.

Several processes (hosts) run the same command, each with its own process id: explicitly
(`--coordinator_address=HOST0:PORT --num_processes=N --process_id=I`) or, on a Cloud TPU pod slice,
under SLURM `srun` or Open MPI `mpirun`, with `--distributed=auto` (JAX reads the environment).
Process 0 prints and writes metrics.jsonl; every process takes part in the checkpoint saves.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from upgpt_jax.cli_errors import fail, one_line_errors, parse_flags
from upgpt_jax.compilation_cache import enable_compilation_cache
from upgpt_jax.distributed import EXPLICIT_FLAGS, initialize, is_main_process
from upgpt_jax.tpu_flags import apply_libtpu_flags, config_libtpu_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl.")
flags.DEFINE_enum("distributed", None, ["none", "explicit", "auto"],
                  "Multi-process launch: 'explicit' with the three flags below (the default when they are "
                  "given), 'auto' to let JAX detect a TPU pod slice / SLURM / Open MPI, 'none' (the default "
                  "otherwise) for one process.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, the same on every process.")
flags.DEFINE_integer("num_processes", None, "How many processes the job has.")
flags.DEFINE_integer("process_id", None, "This process's id, in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])

def join_processes() -> None:
    """Connect this process to the others of a multi-process job as `--distributed` says (before any
    device is touched: JAX fixes its device list on first use)."""
    explicit = {name: flags.FLAGS[name].value for name in EXPLICIT_FLAGS}
    given = any(value is not None for value in explicit.values())
    if flags.FLAGS.distributed == "none" and given or flags.FLAGS.distributed == "explicit" and not given:
        raise app.UsageError(f"--distributed={flags.FLAGS.distributed} and --{', --'.join(EXPLICIT_FLAGS)} "
                             f"go together: explicit needs them, none excludes them")
    if flags.FLAGS.distributed != "none":
        initialize(**explicit, auto_detect=flags.FLAGS.distributed == "auto")


@one_line_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
        logging.set_verbosity(logging.WARNING)
    apply_libtpu_flags(config_libtpu_flags(flags.FLAGS.config))  # a pod config's; before libtpu starts
    join_processes()
    enable_compilation_cache()
    from upgpt_jax.train.checkpointing import CheckpointRestoreError, CheckpointSaveError
    from upgpt_jax.train.trainer import train

    try:
        result = train(flags.FLAGS.config, flags.FLAGS.workdir)
    except CheckpointRestoreError as error:
        fail(str(error), code=1)
    except CheckpointSaveError as error:
        # orbax leaves threads waiting on the failed save, which would block a normal exit for good.
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    if is_main_process():
        print(f"{result.stop_reason} at step {int(result.state.step)}; last checkpoint: {result.last_checkpoint}")
    if result.stop_reason == "diverged":
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
