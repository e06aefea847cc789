"""Time sampling: DDIM with classifier-free guidance, latency and img/s per batch size.

    python benchmarks/sampling.py --config configs/upgpt_256.py --batches 1,8,64 --dtype bfloat16
        [--num_steps 50] [--guidance 3] [--end_to_end] [--peers] [--out results.jsonl] [--config.x=y ...]

Two jitted functions, each on one device, with random weights (shapes from `jax.eval_shape` of
`model.init`, values drawn by numpy in the compute dtype `--dtype`, which is also the parameters'
dtype, as a bf16 checkpoint would be served) and random inputs:

- denoising loop: `sample(guided_eps_fn(model, params, mask, conditions, scales), schedule, x_T,
  method="ddim", num_steps=N)` from random CLIP-sized conditions (text (B, 77, D), style (B, 9, D),
  pose (B, 85)), a random person mask (B, h, w, 1) and x_T. This is what the peer anchors
  (shared/benchmarks/anchors_h100.md) time. It includes the one batched fusion call that builds
  the branch contexts; the loop is one `lax.scan` with one UNet call per step on all guidance
  branches stacked along the batch.
- `--end_to_end`: upgpt_jax.sampling.sampler's jitted conditions -> images function (CLIP text,
  style-image and style-text encoding, the same loop, VAE decoding to uint8) on random token ids
  and CLIP-normalised crops. Host-side work (tokenizing, cropping, PIL resizes) is not timed.

`--guidance` takes one scale for all three conditions (classic CFG: 2 branches, uncond and
fully conditioned, the anchors' setting; 1 means no guidance, 1 branch) or per-condition scales
`pose=1,style=2,text=3` (chained guidance: up to 4 branches). The table reports the UNet rows per
step (branches x batch).

Each function is lowered and compiled ahead of time (both timed, apart; the persistent
compilation cache of train.py is on, so a rerun compiles from cache), run `--warmup` times, then
`--runs` times, each ending in `block_until_ready`; the latency is the median. "floor" is the
arithmetic floor num_steps x branches x batch x UNet forward FLOPs (upgpt_jax.flops) / peak FLOP/s,
and "% floor" is floor / latency (an MFU of the UNet work: the fusion, CLIP and VAE are not in it).
Memory: XLA's own estimate for the compiled function (arguments + outputs + temporaries) and,
where the backend reports it, the allocator's peak so far in the process (it never resets, so it
is the maximum over the rows before it as well).

`--peers` (GPU; on CPU only with `--peers_on_cpu`, a smoke run) also times the denoising loop of
diffusers' PyTorch UNet2DConditionModel of the same shape (the mapping tests/test_unet.py checks)
with diffusers' DDIMScheduler (the same schedule and "leading" timesteps), the branches stacked
along the batch and combined with the same weights (for 2 branches this is the classic
uncond + s (cond - uncond)), weights in bf16 when --dtype bfloat16, eager and (`--peer_compile`)
torch.compile. Their contexts are random tensors (no fusion call); the first run (which compiles,
for torch.compile) is reported as the compile time.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from absl import flags
from ml_collections import config_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from train_step import GIB, _fmt, append_jsonl  # noqa: E402

from upgpt_jax.cli_flags import parse_guidance  # noqa: E402
from upgpt_jax.compilation_cache import enable_compilation_cache  # noqa: E402
from upgpt_jax.hardware import peak_flops_per_device  # noqa: E402

# Flags on a FlagValues of our own, so importing this module defines nothing global.
FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", flag_values=FLAGS)
flags.DEFINE_list("batches", ["1", "8", "64"], "Batch sizes to time.", flag_values=FLAGS)
flags.DEFINE_integer("num_steps", 50, "DDIM steps.", flag_values=FLAGS)
flags.DEFINE_string("guidance", "3", "One scale for all conditions (classic CFG) or pose=..,style=..,text=..",
                    flag_values=FLAGS)
flags.DEFINE_integer("runs", 5, "Timed runs per measurement (the median is reported).", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 1, "Untimed runs after compilation.", flag_values=FLAGS)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute and parameter dtype (default: config.model.dtype).",
                  flag_values=FLAGS)
flags.DEFINE_bool("end_to_end", False, "Also time CLIP encoding + sampling + VAE decoding.", flag_values=FLAGS)
flags.DEFINE_bool("peers", False, "Also time diffusers' PyTorch UNet with DDIMScheduler (GPU only).",
                  flag_values=FLAGS)
flags.DEFINE_bool("peers_on_cpu", False, "Allow --peers on CPU (a smoke run; use a tiny config).", flag_values=FLAGS)
flags.DEFINE_bool("peer_compile", True, "With --peers, also time torch.compile.", flag_values=FLAGS)
flags.DEFINE_float("peak_tflops", None, "Peak FLOP/s per device in TFLOP/s (default: table by device kind).",
                   flag_values=FLAGS)
flags.DEFINE_string("out", None, "Append one JSON line per measurement to this file.", flag_values=FLAGS)
flags.mark_flags_as_required(["config"], flag_values=FLAGS)


def guidance_scales(text: str) -> dict[str, float]:
    """"3" -> the same scale for every condition; "pose=1,style=2,text=3" -> those scales."""
    from upgpt_jax.diffusion import GUIDANCE_ORDER

    return dict.fromkeys(GUIDANCE_ORDER, float(text)) if "=" not in text else parse_guidance(text)


def median_latency(run: Callable[[], Any], runs: int, warmup: int, sync: Callable[[Any], Any]) -> float:
    """Median seconds of `run()` over `runs` calls after `warmup`, each synchronised."""
    for _ in range(warmup):
        sync(run())
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        sync(run())
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def random_params(shapes: Any, seed: int = 0, scale: float = 0.2) -> Any:
    """Random non-zero values for a tree of ShapeDtypeStructs, each leaf ~ N(0, scale^2 / fan_in) in
    its own dtype, drawn with numpy (no XLA compilation: a jitted draw of the hundreds of leaves
    compiles for minutes on CPU) and put on the default device (as tests/conftest.py random_params)."""
    import jax

    rng = np.random.default_rng(seed)

    def draw(leaf: Any) -> Any:
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        values = rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(scale / np.sqrt(fan_in))
        return jax.device_put(values.astype(leaf.dtype))

    return jax.tree.map(draw, shapes)


def random_conditions(model_config: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Fusion inputs (CLIP-sized text and style embeddings, SMPL pose), a person mask and x_T."""
    from upgpt_jax.flops import latent_size

    rng = np.random.default_rng(seed)
    height, width = latent_size(model_config)
    fusion = model_config.fusion
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return dict(text=normal(batch, model_config.clip.max_length, fusion.text_dim),
                style=normal(batch, fusion.num_parts, fusion.style_dim),
                pose=normal(batch, fusion.pose_dim),
                person_mask=np.where(rng.random((batch, height, width, 1)) < 0.5, -1.0, 1.0).astype(np.float32),
                x_T=normal(batch, height, width, model_config.latent_channels))


def random_pipeline_batch(model_config: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """What upgpt_jax.sampling.sampler.encode_conditions produces (plus seeds), with random values."""
    rng = np.random.default_rng(seed)
    conditions = random_conditions(model_config, batch, seed)
    clip = model_config.clip
    parts = model_config.fusion.num_parts
    return dict(
        text_ids=rng.integers(0, clip.vocab_size, (batch, clip.max_length), dtype=np.int32),
        styles=rng.standard_normal((batch, parts, clip.image_size, clip.image_size, 3)).astype(np.float32),
        style_text_ids=rng.integers(0, clip.vocab_size, (batch, parts, clip.max_length), dtype=np.int32),
        style_from_text=rng.random((batch, parts)) < 0.5,
        style_present=np.ones((batch, parts), bool),
        person_mask=conditions["person_mask"], pose=conditions["pose"],
        seeds=np.arange(batch, dtype=np.uint32),
    )


def memory(compiled: Any, device: Any) -> dict[str, float | None]:
    """XLA's estimate for `compiled` and the allocator's peak so far (None where not reported)."""
    analysis = compiled.memory_analysis()
    estimate = None if analysis is None else float(
        analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes)
    stats = device.memory_stats() or {}
    return dict(xla_bytes=estimate, peak_bytes=float(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats
                else None)


def time_jitted(name: str, function: Any, args: tuple, runs: int, warmup: int) -> dict[str, Any]:
    """Lower, compile (timed apart), then the median latency of the compiled function."""
    import jax

    start = time.perf_counter()
    lowered = function.lower(*args)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    latency = median_latency(lambda: compiled(*args), runs, warmup, jax.block_until_ready)
    device = jax.devices()[0]
    return dict(impl=name, latency_s=latency, lower_s=lower_s, compile_s=compile_s, **memory(compiled, device),
                device_kind=device.device_kind)


def benchmark_loop(config: Any, model: Any, params: Any, scales: dict[str, float], batch: int) -> dict[str, Any]:
    import jax

    from upgpt_jax.diffusion import NoiseSchedule, guided_eps_fn, sample

    schedule = NoiseSchedule.from_config(config.diffusion)
    num_steps = FLAGS.num_steps

    @jax.jit
    def denoise(params: Any, person_mask: jax.Array, conditions: dict[str, jax.Array], x_T: jax.Array) -> jax.Array:
        eps_fn = guided_eps_fn(model, params, person_mask, conditions, scales)
        return sample(eps_fn, schedule, x_T, None, method="ddim", num_steps=num_steps)

    inputs = jax.device_put(random_conditions(config.model, batch))
    x_T, person_mask = inputs.pop("x_T"), inputs.pop("person_mask")
    denoiser_params = {name: tree for name, tree in params.items() if name != "vae"}  # + condition_stats if used
    return time_jitted("upgpt_jax denoising loop (jax.jit, lax.scan)", denoise,
                       (denoiser_params, person_mask, inputs, x_T), FLAGS.runs, FLAGS.warmup)


def benchmark_end_to_end(config: Any, model: Any, params: Any, clip: tuple[Any, Any], scales: dict[str, float],
                         batch: int) -> dict[str, Any]:
    import jax

    from upgpt_jax.sampling.sampler import SamplingSettings, jitted_sampler
    from upgpt_jax.sharding import make_mesh

    settings = SamplingSettings(method="ddim", num_steps=FLAGS.num_steps, eta=0.0,
                                guidance=tuple(sorted(scales.items())), batch_size=batch)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    run = jitted_sampler(model, clip[0], config.diffusion, settings, mesh, config.axis_rules)
    inputs = jax.device_put(random_pipeline_batch(config.model, batch))
    return time_jitted("upgpt_jax end to end: CLIP + loop + VAE decode (jax.jit)", run, (params, clip[1], inputs),
                       FLAGS.runs, FLAGS.warmup)


def benchmark_torch_peers(config: Any, weights: list[float], batch: int, bf16: bool) -> list[dict[str, Any]]:
    """diffusers' UNet2DConditionModel + DDIMScheduler, branches stacked along the batch."""
    import torch
    from diffusers import DDIMScheduler

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from references import diffusers_unet  # the mapping our UNet parity tests check

    from upgpt_jax.flops import context_length, latent_size

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if bf16 else torch.float32
    diffusion, unet_config = config.diffusion, config.model.unet
    beta_schedule = {"sqrt_linear": "scaled_linear", "linear": "linear"}[diffusion.schedule]
    scheduler = DDIMScheduler(num_train_timesteps=diffusion.num_timesteps, beta_start=diffusion.beta_start,
                              beta_end=diffusion.beta_end, beta_schedule=beta_schedule, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(FLAGS.num_steps)
    height, width = latent_size(config.model)
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, config.model.latent_channels, height, width, generator=generator).to(device)
    mask = torch.where(torch.rand(batch, 1, height, width, generator=generator) < 0.5, -1.0, 1.0).to(device)
    context = torch.randn(len(weights) * batch, context_length(config.model), unet_config.context_dim,
                          generator=generator).to(device, dtype)

    def sync(_: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = []
    for compiled in (False, True) if FLAGS.peer_compile else (False,):
        torch.manual_seed(0)
        unet = diffusers_unet(unet_config).to(device, dtype).eval()
        if compiled:  # a fresh compile per batch size: no recompilation with dynamic shapes from the last one
            torch._dynamo.reset()
        forward = torch.compile(unet) if compiled else unet

        @torch.inference_mode()
        def run() -> torch.Tensor:
            x = x_T
            for t in scheduler.timesteps:
                rows = torch.cat([torch.cat([x, mask], dim=1).to(dtype)] * len(weights))
                eps = forward(rows, t, encoder_hidden_states=context).sample.float().chunk(len(weights))
                if len(weights) == 2:  # classic CFG: uncond + s (cond - uncond), s = weights[1]
                    guided = eps[0] + weights[1] * (eps[1] - eps[0])
                else:
                    guided = sum(weight * branch for weight, branch in zip(weights, eps))
                x = scheduler.step(guided, t, x).prev_sample
            return x

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        sync(run())  # compiles (torch.compile) and allocates
        first_s = time.perf_counter() - start
        latency = median_latency(run, FLAGS.runs, FLAGS.warmup, sync)
        name = "diffusers UNet2DConditionModel + DDIMScheduler torch " + ("compile" if compiled else "eager")
        results.append(dict(
            impl=f"{name} {'bf16' if bf16 else 'fp32'}", latency_s=latency, lower_s=None, compile_s=first_s,
            xla_bytes=None, peak_bytes=float(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None,
            device_kind=torch.cuda.get_device_name() if device.type == "cuda" else "cpu"))
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print("| impl | batch | UNet rows/step | latency s | img/s | floor s | % floor | lower s | compile s "
          "| XLA est. GiB | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        floor = result["floor_s"]
        print(f"| {result['impl']} | {result['batch']} | {result['unet_rows_per_step']} | {result['latency_s']:.4g} | "
              f"{result['img_per_s']:.3g} | {_fmt(floor, '.3g')} | "
              f"{_fmt(floor and 100 * floor / result['latency_s'], '.1f')} | {_fmt(result['lower_s'], '.1f')} | "
              f"{_fmt(result['compile_s'], '.1f')} | {_fmt(result['xla_bytes'] and result['xla_bytes'] / GIB, '.3f')} | "
              f"{_fmt(result['peak_bytes'] and result['peak_bytes'] / GIB, '.2f')} |")


def main(argv: list[str]) -> None:
    FLAGS(argv)
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from upgpt_jax.diffusion import guidance_branches, sampling_timesteps
    from upgpt_jax.flops import unet_forward_flops
    from upgpt_jax.models.upgpt import build_model, example_inputs

    enable_compilation_cache()
    config = FLAGS.config
    with config.unlocked():
        if FLAGS.dtype:
            config.model.dtype = FLAGS.dtype
        config.model.param_dtype = config.model.dtype
    scales = guidance_scales(FLAGS.guidance)
    weights = [weight for _, weight in guidance_branches(scales)]
    num_steps = len(sampling_timesteps("ddim", FLAGS.num_steps, config.diffusion.num_timesteps))
    batches = [int(batch) for batch in FLAGS.batches]

    model = build_model(config.model)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), **example_inputs(config.model)))["params"]
    params = random_params(shapes)
    dtype = jnp.dtype(config.model.dtype)
    clip = None
    if FLAGS.end_to_end:  # transformers' Flax CLIP is imported only here (GPU images may lack it)
        from upgpt_jax.models.clip import clip_from_config

        clip = clip_from_config(config.model.clip, seed=0, dtype=dtype, param_dtype=dtype)
    run_peers = FLAGS.peers and (jax.default_backend() != "cpu" or FLAGS.peers_on_cpu)

    unet_flops = unet_forward_flops(config.model)
    common = dict(config=config_flags.get_config_filename(FLAGS["config"]), num_steps=num_steps,
                  guidance=scales, branches=len(weights), dtype=config.model.dtype, runs=FLAGS.runs,
                  backend=jax.default_backend(), unet_forward_flops=unet_flops)
    results = []
    for batch in batches:
        rows = [benchmark_loop(config, model, params, scales, batch)]
        if FLAGS.end_to_end:
            rows.append(benchmark_end_to_end(config, model, params, clip, scales, batch))
        if run_peers:
            rows += benchmark_torch_peers(config, weights, batch, config.model.dtype == "bfloat16")
        for row in rows:
            peak = peak_flops_per_device(row["device_kind"], FLAGS.peak_tflops)
            flops = num_steps * len(weights) * batch * unet_flops
            row.update(batch=batch, unet_rows_per_step=len(weights) * batch, img_per_s=batch / row["latency_s"],
                       floor_s=flops / peak if peak else None)
        results += rows

    print(f"{common['config']}: DDIM {num_steps} steps, guidance {scales} -> {len(weights)} UNet evaluations per "
          f"image per step, compute {config.model.dtype}, median of {FLAGS.runs} runs after {FLAGS.warmup}; "
          f"UNet forward {unet_flops / 1e9:.3f} GFLOP/image; device {results[0]['device_kind']}")
    if FLAGS.peers and not run_peers:
        print("peers skipped: no GPU (pass --peers_on_cpu for a smoke run)")
    print_table(results)
    if FLAGS.out:
        append_jsonl(FLAGS.out, common, results)


if __name__ == "__main__":
    main(sys.argv)
