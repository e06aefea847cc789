"""The training loop of either stage: data -> the stage's step input -> its train step -> logs, checkpoints.

`_train` reads top to bottom as big_vision's train.py: set-up once (model and sharding, the stage,
data, state; what is built comes from upgpt_jax.train.build, cached per configuration), then the
loop, which asks the stage (upgpt_jax.train.stages) what to feed its step and what to log.

Resuming is re-running: the same config and `workdir` restore the newest checkpoint (state and
data position) and continue to `config.train.num_steps`. On CPU the losses then equal an
uninterrupted run's. SIGTERM saves a checkpoint at the step reached and returns normally. After
`max_consecutive_nan` skipped steps in a row (a non-finite loss or gradient, or an update larger
than `max_update_ratio` x the weights) the loop stops without saving, so the newest checkpoint is
the last good one. One job at a time holds the workdir (upgpt_jax.train.workdir_hold); a damaged
newest checkpoint is set aside and the previous one restored (upgpt_jax.train.checkpointing).
Multi-process (multi-host) runs take the same path: every process calls `train` (see
upgpt_jax.distributed), loads its slice of each batch and joins every step and checkpoint save;
process 0 alone writes the logs.

The host never waits for the device on a step that does not need a value from it: each step only
dispatches work (under a device-to-host transfer guard, so a stray read raises on GPU/TPU), and the
metrics stay on the device (`MetricsWindow`) until a log step, a checkpoint step or the NaN check
(at least every `max_consecutive_nan` steps) fetches them. Logs carry img/s and, where the device's
peak is known (upgpt_jax.hardware, or `train.peak_tflops`), the diffusion stage's achieved
`tflops_per_device` and `mfu`. `train.profile_steps` traces chosen steps (upgpt_jax.train.profiling).
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from upgpt_jax import storage
from upgpt_jax.data.pipeline import make_global_batch
from upgpt_jax.distributed import any_process, compile_then_meet, host_to_global, is_main_process
from upgpt_jax.hardware import peak_flops_per_device
from upgpt_jax.phases import phase
from upgpt_jax.rundir.layout import CHECKPOINT_DIR, PROFILE_DIR
from upgpt_jax.rundir.shardings import with_shardings
from upgpt_jax.rundir.vae import load_vae
from upgpt_jax.train.build import Parts, build
from upgpt_jax.train.checkpointing import Checkpointer, CheckpointSaveError, PreemptionSignal
from upgpt_jax.train.condition_stats import with_condition_stats
from upgpt_jax.train.config_checks import check_training_config
from upgpt_jax.train.data import training_pipeline
from upgpt_jax.train.encoders import build_encoders
from upgpt_jax.train.latent_scale import resolve_scale_factor
from upgpt_jax.train.metrics_log import MetricsLog
from upgpt_jax.train.metrics_window import MetricsWindow
from upgpt_jax.train.previews import SamplePreviews
from upgpt_jax.train.profiling import StepProfiler, parse_profile_steps
from upgpt_jax.train.progress import TrainProgress
from upgpt_jax.train.state import TrainState
from upgpt_jax.train.workdir_hold import hold_workdir


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    stop_reason: str  # "done", "preempted" or "diverged"
    last_checkpoint: int | None


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> TrainResult:
    """Train the stage (`config.train.stage`) described by `config` in `workdir` (created or resumed).

    Raises, before any set-up: ConfigError (a setting out of range), WorkdirBusy (another live job
    holds `workdir`); later: CheckpointRestoreError (no checkpoint restores), CheckpointSaveError
    (a save failed: the run stops; the message says which steps since the last checkpoint are lost).
    """
    started = time.perf_counter()
    check_training_config(config)
    profile_steps = parse_profile_steps(config.train.get("profile_steps", ()))  # refused before any set-up
    workdir = storage.path(workdir)  # a local folder or a URL (gs://...): upgpt_jax.storage
    workdir.mkdir(parents=True, exist_ok=True)
    with hold_workdir(workdir):
        return _train(config, workdir, profile_steps, started)


def _train(config: ml_collections.ConfigDict, workdir: storage.AnyPath, profile_steps: tuple[int, int] | None,
           started: float) -> TrainResult:
    train_config = config.train
    checkpointer = Checkpointer(workdir / CHECKPOINT_DIR, train_config.keep_checkpoints)
    checkpointer.set_aside_incomplete()  # before the newest checkpoint's config is read
    with phase("set-up: model, data, restore or init", enabled=is_main_process()):
        # --- Model and sharding: the mesh, the model and the frozen encoders; with scale_by_std they
        # measure the latent scale (or the run's own is read back), which completes the config.
        encoders = build_encoders(config)
        config = resolve_scale_factor(config, workdir, checkpointer.latest_step() is not None, encoders)
        # --- The stage: optimizer, state shapes and shardings, init and jitted step (upgpt_jax.train.build).
        parts = build(config)
        stage, mesh = parts.stage, parts.mesh
        # --- Data: this host's batches (pixels or precomputed features; the stage reads either).
        pipeline = training_pipeline(config)
        # --- State: the newest checkpoint that restores, with the data position; else a fresh state.
        restored = checkpointer.restore_latest(with_shardings(parts.abstract, parts.shardings))
        if restored is None:
            state, last_checkpoint = initial_state(parts, train_config), None
        else:
            last_checkpoint, state, data_state = restored
            pipeline.set_state(data_state)
    if restored is None:
        state = with_condition_stats(state, parts, config)
    # --- Logs, previews and the throughput figures.
    start_step = int(state.step)
    metrics_log = MetricsLog(workdir, start_step)
    previews = None
    if train_config.sample_every and stage.previews:
        previews = SamplePreviews(config, parts.model, parts.encoders.clip, parts.encoders.clip_params, mesh, workdir)
    peak_flops = peak_flops_per_device(jax.devices()[0].device_kind, train_config.get("peak_tflops", 0.0))

    # --- The loop.
    stop_reason, window = "done", MetricsWindow(train_config.max_consecutive_nan)
    timed_steps, window_start, latest = 0, None, None
    progress = TrainProgress(train_config.num_steps, start_step, started, enabled=is_main_process())
    step = start_step
    try:
        with PreemptionSignal() as preemption, pipeline, StepProfiler(profile_steps, workdir / PROFILE_DIR) as profiler:
            for step in range(start_step + 1, train_config.num_steps + 1):
                # Only dispatch: the device runs the step while the host goes on. Reading a device value
                # here would wait for it; JAX raises on GPU/TPU (a CPU "device" is host memory: no guard).
                first = window_start is None
                if first:
                    progress.compiling(step)
                with jax.transfer_guard_device_to_host("disallow"), profiler.step(step):
                    batch = make_global_batch(stage.host_batch(next(pipeline)), mesh, config.axis_rules)
                    step_input = stage.step_input(state.frozen_params, batch,
                                                  compile_label=f"encode {step}" if first else None)
                    if first:
                        compile_then_meet(stage.step, f"train step {step}", state, step_input)
                    state, metrics = stage.step(state, step_input)
                    window.add(metrics)
                if first:  # img/s and the ETA are timed from the end of the first (compiling) step
                    jax.block_until_ready(metrics)
                    window_start = time.perf_counter()
                    progress.compiled(step)
                else:
                    timed_steps += 1

                log_due = step % train_config.log_every == 0 or step == train_config.num_steps
                checkpoint_due = step % train_config.checkpoint_every == 0 or step == train_config.num_steps
                synced = log_due or checkpoint_due or window.fetch_due()
                if synced:  # the one device-to-host transfer: every step's metrics since the last one
                    latest = window.fetch()
                if log_due:
                    now = time.perf_counter()
                    img_per_s = timed_steps * train_config.batch_size / (now - window_start) if timed_steps else None
                    record = {
                        "step": step,
                        "loss": window.take_mean_loss(),  # of the finite losses since the last log
                        "lr": float(latest["lr"]),
                        "grad_norm": float(latest["grad_norm"]),
                        "skipped": int(latest["skipped"]),
                        "img_per_s": img_per_s,
                        **{key: float(latest[key]) for key in stage.metrics},
                        **utilization(stage.flops_per_image, img_per_s, jax.device_count(), peak_flops),
                    }
                    metrics_log.write(record)
                    progress.show(loss="-" if record["loss"] is None else f"{record['loss']:.4f}",
                                  skipped=str(record["skipped"]))
                    timed_steps, window_start = 0, now
                if previews is not None and (step % train_config.sample_every == 0 or step == train_config.num_steps):
                    grid = previews(step, {**state.ema_params, **state.frozen_params})
                    metrics_log.tensorboard.image(step, "samples", grid)
                    window_start = time.perf_counter()  # sampling time is not training time
                progress.step_done(step)
                if window.diverged:
                    stop_reason = "diverged"
                    break
                # Never checkpoint a non-finite step: the newest checkpoint stays the last good one.
                preempted = preemption_agreed(preemption.received is not None, synced)
                if (checkpoint_due and latest["finite"]) or preempted:
                    checkpointer.save(step, state, pipeline.get_state(), config)
                    last_checkpoint = step
                if preempted:
                    stop_reason = "preempted"
                    break
                profiler.after_step(step, state)
            profiler.stop(state)  # when the loop ended inside the window
        progress.close()
        metrics_log.close()
        checkpointer.wait()
    except CheckpointSaveError as error:  # orbax's threads stay blocked: train.py exits at once
        progress.close()
        metrics_log.close()
        written = checkpointer.latest_step()
        raise CheckpointSaveError(f"{error}; the last checkpoint is step {written}: the {step - (written or 0)} "
                                  f"steps since it are lost") from error
    checkpointer.close()
    if stop_reason == "diverged" and is_main_process():
        tqdm.write(f"stopped: {window.consecutive_nan} skipped steps in a row (a non-finite loss or gradient, or an "
                   f"update larger than train.max_update_ratio x the weights); the last good checkpoint is step "
                   f"{last_checkpoint} in {workdir / CHECKPOINT_DIR}")
    return TrainResult(state=state, stop_reason=stop_reason, last_checkpoint=last_checkpoint)


def preemption_agreed(received: bool, synced: bool) -> bool:
    """Whether every process stops for a preemption at this step. One process: its own flag, every
    step. Several: agreeing takes a cross-process collective, which waits for the device, so they
    agree only on steps that read the device anyway (`synced`; at most `max_consecutive_nan` steps
    apart), which every process takes at the same steps (they follow replicated metrics)."""
    if jax.process_count() == 1:
        return received
    return synced and any_process(received)


def utilization(flops_per_image: float | None, img_per_s: float | None, num_devices: int,
                peak_flops: float | None) -> dict[str, float]:
    """`tflops_per_device` (achieved model FLOP/s per device, in TFLOP/s) and `mfu` (achieved / peak).

    Model FLOPs are upgpt_jax.flops' analytic count (UNet + fusion, forward and backward; not the
    frozen encoders, which precomputed features skip, nor remat's recomputation), so the figure
    compares across hardware and compiler settings. Empty where a factor is unknown: no count (VAE
    stage), no timed steps yet, or no peak for the device kind (CPU) and no `train.peak_tflops`.
    """
    if not (flops_per_image and img_per_s and peak_flops):
        return {}
    achieved = flops_per_image * img_per_s / num_devices
    return {"tflops_per_device": achieved / 1e12, "mfu": achieved / peak_flops}


def initial_state(parts: Parts, train_config: ml_collections.ConfigDict) -> TrainState:
    """A fresh state; with `train_config.init_vae_from` its VAE weights come from there (checked
    against this config before anything is initialised): frozen in the diffusion stage, trained
    (params and EMA) in the VAE stage."""
    if not train_config.init_vae_from:
        return parts.init()
    group = "frozen_params" if "vae" in parts.stage.frozen else "params"
    vae = load_vae(train_config.init_vae_from, like=getattr(parts.abstract, group)["vae"])
    state = parts.init()

    def place(target: Any) -> Any:
        return jax.tree.map(host_to_global, vae, target)

    replacements = {group: {**getattr(state, group), "vae": place(getattr(parts.shardings, group)["vae"])}}
    if group == "params":
        replacements["ema_params"] = {**state.ema_params, "vae": place(parts.shardings.ema_params["vae"])}
    return state.replace(**replacements)
