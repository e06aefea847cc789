"""Time the diffusion stage's train step: compile time, img/s, peak memory and MFU.

    python benchmarks/train_step.py --config configs/upgpt_256.py --batch 64 --dtype bfloat16 [--steps 20]
        [--remat] [--peers] [--out results.jsonl] [--config.model.unet.num_heads=8 ...]

The step is the trainer's own (upgpt_jax.train: make_train_step with its shardings and donated
state, AdamW + EMA), fed random precomputed features (VAE latent moments, CLIP text and style
embeddings, person mask, pose), as the peer anchors' random-data measurements: the frozen
encoders are not timed. Lowering and compilation are timed apart (ahead of time, `.lower()` then
`.compile()`; the persistent compilation cache of train.py is on, so a rerun compiles from
cache), then `--steps` steps after `--warmup` are timed as one block ending in
`block_until_ready`. MFU = analytic model FLOPs per image (upgpt_jax.flops.train_step_flops,
no remat recomputation) x img/s / (peak dense bf16 FLOP/s of the devices).

`--peers` (GPU) also times diffusers' PyTorch UNet2DConditionModel of the same shape (the mapping
tests/test_unet.py checks for parity) with AdamW, forward + backward + step, eager and
torch.compile (`--peer_compile`), bf16 autocast when --dtype bfloat16, timed the same way (cuda
synchronize). The peers get a plain random context tensor, so their FLOPs leave out the
context's gradient.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags
from ml_collections import config_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from upgpt_jax.compilation_cache import enable_compilation_cache  # noqa: E402
from upgpt_jax.hardware import peak_flops_per_device  # noqa: E402

# Flags on a FlagValues of our own, so importing this module defines nothing global.
FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", flag_values=FLAGS)
flags.DEFINE_integer("batch", None, "Global batch size.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Timed steps.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", flag_values=FLAGS)
flags.DEFINE_bool("remat", False, "Rematerialise res and transformer blocks (config.model.unet.remat).",
                  flag_values=FLAGS)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: config.model.dtype).",
                  flag_values=FLAGS)
flags.DEFINE_bool("peers", False, "Also time diffusers' PyTorch UNet (GPU only).", flag_values=FLAGS)
flags.DEFINE_bool("peers_on_cpu", False, "Allow --peers on CPU (a smoke run; use a tiny config).",
                  flag_values=FLAGS)
flags.DEFINE_bool("peer_compile", True, "With --peers, also time torch.compile (minutes to compile at full size).",
                  flag_values=FLAGS)
flags.DEFINE_float("peak_tflops", None, "Peak FLOP/s per device in TFLOP/s (default: table by device kind).",
                   flag_values=FLAGS)
flags.DEFINE_string("out", None, "Append one JSON line per measurement to this file.", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "batch"], flag_values=FLAGS)

GIB = 2.0 ** 30


def random_features(model_config: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of precomputed features (upgpt_jax.train.step.FEATURE_KEYS) of random values."""
    from upgpt_jax.flops import latent_size

    rng = np.random.default_rng(seed)
    height, width = latent_size(model_config)
    fusion = model_config.fusion
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "latent_moments": np.concatenate([normal(batch, height, width, model_config.latent_channels),
                                          np.full((batch, height, width, model_config.latent_channels), -4.0,
                                                  np.float32)], axis=-1),
        "text_embedding": normal(batch, model_config.clip.max_length, fusion.text_dim),
        "style_embedding": normal(batch, fusion.num_parts, fusion.style_dim),
        "person_mask": np.where(rng.random((batch, height, width, 1)) < 0.5, -1.0, 1.0).astype(np.float32),
        "style_present": np.ones((batch, fusion.num_parts), bool),
        "pose": normal(batch, fusion.pose_dim),
    }


def peak_memory(device: Any, compiled: Any) -> tuple[float | None, str]:
    """(peak bytes, source): the allocator's peak where the backend reports it, else XLA's estimate."""
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "peak_bytes_in_use"
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None, "n/a"
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
             + analysis.temp_size_in_bytes)
    return float(total), "memory_analysis"


def time_steps(run_step: Any, state: Any, steps: int, warmup: int, sync: Any) -> tuple[Any, float]:
    """Runs warmup then `steps` steps of `state = run_step(state)`; returns (state, timed seconds)."""
    for _ in range(warmup):
        state = run_step(state)
    sync(state)
    start = time.perf_counter()
    for _ in range(steps):
        state = run_step(state)
    sync(state)
    return state, time.perf_counter() - start


def benchmark_jax(config: Any, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    import jax

    from upgpt_jax.data.pipeline import make_global_batch
    from upgpt_jax.models.upgpt import build_model
    from upgpt_jax.sharding import make_mesh
    from upgpt_jax.train.optimizer import make_optimizer
    from upgpt_jax.train.state import abstract_state, make_init_fn, with_shardings
    from upgpt_jax.train.step import make_train_step

    mesh = make_mesh(config.mesh, None, config.get("mesh_dcn"))
    model = build_model(config.model)
    optimizer = make_optimizer(config.optim, config.train.grad_accum_steps)
    abstract, shardings = abstract_state(model, config, optimizer, mesh)
    train_step = make_train_step(model, config, optimizer, shardings, mesh)
    features = make_global_batch(random_features(config.model, batch), mesh, config.axis_rules)

    start = time.perf_counter()
    lowered = train_step.lower(with_shardings(abstract, shardings), features)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s

    start = time.perf_counter()
    state = jax.block_until_ready(make_init_fn(model, config, optimizer, shardings)())
    init_s = time.perf_counter() - start
    metrics = {}

    def run_step(state: Any) -> Any:
        state, metrics["last"] = compiled(state, features)
        return state

    state, seconds = time_steps(run_step, state, steps, warmup, jax.block_until_ready)
    loss = float(metrics["last"]["loss"])
    peak, peak_source = peak_memory(jax.devices()[0], compiled)
    return dict(impl="upgpt_jax train step (jax.jit, AOT)", img_per_s=batch * steps / seconds, lower_s=lower_s,
                compile_s=compile_s, init_s=init_s, peak_bytes=peak, peak_source=peak_source, last_loss=loss,
                devices=len(jax.devices()), device_kind=jax.devices()[0].device_kind)


def benchmark_torch_peers(config: Any, batch: int, steps: int, warmup: int, bf16: bool) -> list[dict[str, Any]]:
    """diffusers' UNet2DConditionModel of the same shape: eager, then torch.compile."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from references import diffusers_unet  # the mapping our UNet parity tests check

    from upgpt_jax.flops import context_length, latent_size

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    height, width = latent_size(config.model)
    unet = config.model.unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, unet.in_channels, height, width, generator=generator).to(device)
    target = torch.randn(batch, unet.out_channels, height, width, generator=generator).to(device)
    context = torch.randn(batch, context_length(config.model), unet.context_dim, generator=generator).to(device)
    timesteps = torch.randint(0, config.diffusion.num_timesteps, (batch,), generator=generator).to(device)

    def sync(_: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = []
    for compiled in (False, True) if FLAGS.peer_compile else (False,):
        torch.manual_seed(0)
        model = diffusers_unet(unet).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.optim.learning_rate),
                                      weight_decay=float(config.optim.weight_decay), fused=device.type == "cuda")
        forward = torch.compile(model) if compiled else model

        def run_step(state: Any) -> Any:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                prediction = forward(sample, timesteps, encoder_hidden_states=context).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), target)
            loss.backward()
            optimizer.step()
            return loss.detach()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        loss = run_step(None)  # the first step compiles (torch.compile) and allocates
        sync(None)
        first_s = time.perf_counter() - start
        loss, seconds = time_steps(run_step, loss, steps, warmup, sync)
        name = "diffusers UNet2DConditionModel torch " + ("compile" if compiled else "eager")
        results.append(dict(
            impl=f"{name}{' bf16 autocast' if bf16 else ' fp32'}", img_per_s=batch * steps / seconds,
            lower_s=None, compile_s=first_s, init_s=None,
            peak_bytes=float(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None,
            peak_source="max_memory_allocated" if device.type == "cuda" else "n/a", last_loss=float(loss),
            devices=1, device_kind=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        ))
    return results


def append_jsonl(path: str, common: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """One JSON line per result (the run's common fields first) appended to `path`."""
    with open(path, "a") as file:
        for result in results:
            file.write(json.dumps({**common, **result}) + "\n")


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def main(argv: list[str]) -> None:
    FLAGS(argv)
    import jax

    from upgpt_jax.flops import train_step_flops

    enable_compilation_cache()
    config = FLAGS.config
    with config.unlocked():
        config.train.batch_size = FLAGS.batch
        config.model.unet.remat = FLAGS.remat
        if FLAGS.dtype:
            config.model.dtype = FLAGS.dtype
    common = dict(config=config_flags.get_config_filename(FLAGS["config"]),
                  batch=FLAGS.batch, steps=FLAGS.steps, dtype=config.model.dtype, remat=FLAGS.remat,
                  backend=jax.default_backend())

    results = [dict(benchmark_jax(config, FLAGS.batch, FLAGS.steps, FLAGS.warmup),
                    flops_per_image=train_step_flops(config.model))]
    if FLAGS.peers:
        if jax.default_backend() == "cpu" and not FLAGS.peers_on_cpu:
            print("peers skipped: no GPU (pass --peers_on_cpu for a smoke run)")
        else:
            peers = benchmark_torch_peers(config, FLAGS.batch, FLAGS.steps, FLAGS.warmup,
                                          config.model.dtype == "bfloat16")
            peer_flops = train_step_flops(config.model, context_requires_grad=False)
            results += [dict(result, flops_per_image=peer_flops) for result in peers]

    print(f"{common['config']}: batch {FLAGS.batch}, {FLAGS.steps} timed steps after {FLAGS.warmup}, "
          f"compute {config.model.dtype}, remat {FLAGS.remat}; analytic train step "
          f"{results[0]['flops_per_image'] / 1e9:.2f} GFLOP/image (VAE encoder and CLIP not included)")
    print("| impl | device | img/s | MFU | lower s | compile s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        peak = peak_flops_per_device(result["device_kind"], FLAGS.peak_tflops)
        result["mfu"] = (result["flops_per_image"] * result["img_per_s"] / (peak * result["devices"])
                         if peak else None)
        print(f"| {result['impl']} | {result['device_kind']} x{result['devices']} | {result['img_per_s']:.2f} | "
              f"{_fmt(result['mfu'] and 100 * result['mfu'], '.1f')}{'%' if result['mfu'] else ''} | "
              f"{_fmt(result['lower_s'], '.1f')} | {_fmt(result['compile_s'], '.1f')} | "
              f"{_fmt(result['peak_bytes'] and result['peak_bytes'] / GIB, '.2f')} "
              f"({result['peak_source']}) |")
    if FLAGS.out:
        append_jsonl(FLAGS.out, common, results)


if __name__ == "__main__":
    main(sys.argv)
