"""upgpt_jax.aot: the collectives parser and roofline against hand-computed values, and the CLI
compiling a micro config ahead of time for 8 CPU devices and (where libtpu is installed, the
`tpu` extra) for a TPU v5e 2x2 topology this host does not have."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.synthetic_tiny import get_config
from upgpt_jax.aot import hlo
from upgpt_jax.aot.report import roofline
from upgpt_jax.flops import train_step_flops, unet_forward_flops

REPO = Path(__file__).resolve().parents[1]

# TPU style: an async all-gather is a fusion whose root is an AsyncCollectiveStart custom call; the
# done consumes its tuple through get-tuple-elements; a compute fusion runs in between. Then a
# synchronous combined all-reduce of a tuple, and a while loop of 5 trips with an all-reduce.
TPU_HLO = """
%gather_start (param_0.1: bf16[8,85]) -> (bf16[8,85], bf16[32,85], s32[2]) {
  %param_0.1 = bf16[8,85]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  %all-gather.7 = bf16[32,85]{1,0:T(8,128)(2,1)} all-gather(%param_0.1), channel_id=1, dimensions={0}
  ROOT %custom-call.1 = (bf16[8,85]{1,0}, bf16[32,85]{1,0}, s32[2]{0}) custom-call(%all-gather.7), custom_call_target="AsyncCollectiveStart"
}

%gather_done (param_0.2: bf16[32,85]) -> bf16[32,85] {
  %param_0.2 = bf16[32,85]{1,0} parameter(0)
  ROOT %custom-call.2 = bf16[32,85]{1,0} custom-call(%param_0.2), custom_call_target="AsyncCollectiveDone"
}

%matmul (param_0.3: f32[16,16]) -> f32[16,16] {
  %param_0.3 = f32[16,16]{1,0} parameter(0)
  ROOT %dot.1 = f32[16,16]{1,0} dot(%param_0.3, %param_0.3), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%body (p: (s32[], f32[10])) -> (s32[], f32[10]) {
  %p = (s32[], f32[10]{0}) parameter(0)
  %v = f32[10]{0} get-tuple-element(%p), index=1
  %all-reduce.9 = f32[10]{0} all-reduce(%v), channel_id=3, to_apply=%add
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], f32[10]{0}) tuple(%i, %all-reduce.9)
}

%cond (q: (s32[], f32[10])) -> pred[] {
  %q = (s32[], f32[10]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: bf16[8,85], b: f32[16,16], g: bf16[32], h: f32[64], w: (s32[], f32[10])) -> bf16[32,85] {
  %a = bf16[8,85]{1,0} parameter(0)
  %b = f32[16,16]{1,0} parameter(1)
  %g = bf16[32]{0} parameter(2)
  %h = f32[64]{0} parameter(3)
  %w = (s32[], f32[10]{0}) parameter(4)
  %async-collective-start = (bf16[8,85]{1,0}, bf16[32,85]{1,0}, s32[2]{0}) fusion(%a), kind=kCustom, calls=%gather_start
  %get-tuple-element.1 = bf16[32,85]{1,0} get-tuple-element(%async-collective-start), index=1
  %fusion.5 = f32[16,16]{1,0} fusion(%b), kind=kOutput, calls=%matmul, metadata={op_name="jit(step)/transpose(jvp(UPGPT.denoise))/unet/down_blocks_0/attentions_0/transformer_blocks_0/attn1/vmap(BTNH,BSNH->BNTS)/dot_general"}
  %async-collective-done = bf16[32,85]{1,0} fusion(%get-tuple-element.1), kind=kCustom, calls=%gather_done
  %all-reduce.1 = (bf16[32]{0}, f32[64]{0}) all-reduce(%g, %h), channel_id=2, to_apply=%add
  %while.1 = (s32[], f32[10]{0}) while(%w), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %r = bf16[32,85]{1,0} copy(%async-collective-done)
}
"""

# GPU style: start/done opcodes with nothing scheduled between them (async, not overlapped), and
# a reduce-scatter whose operand (the full buffer) is larger than its result.
GPU_HLO = """
ENTRY %main (a: f32[4,8], b: f32[64]) -> f32[16,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[64]{0} parameter(1)
  %all-gather-start = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%a), dimensions={0}
  %all-gather-done = f32[16,8]{1,0} all-gather-done(%all-gather-start)
  %reduce-scatter.1 = f32[16]{0} reduce-scatter(%b), dimensions={0}
  ROOT %r = f32[16,8]{1,0} copy(%all-gather-done)
}
"""


def test_type_bytes_sums_tuples_and_ignores_layouts():
    assert hlo.type_bytes("bf16[32,85]{1,0:T(8,128)(2,1)S(1)}") == 2 * 32 * 85
    assert hlo.type_bytes("(bf16[32]{0}, f32[64]{0}, /*index=2*/pred[3])") == 64 + 256 + 3
    assert hlo.type_bytes("f32[]") == 4


def test_tpu_style_collectives_counted_where_they_run():
    found = hlo.collectives(TPU_HLO)
    summary = hlo.summarize(found)
    assert summary["all-gather"] == dict(count=1, bytes=2 * 32 * 85, asynchronous=1, overlapped=1)
    # One combined all-reduce in the entry (2*32 + 4*64 bytes) and 5 trips of the loop's (4*10 each).
    assert summary["all-reduce"] == dict(count=1 + 5, bytes=(64 + 256) + 5 * 40, asynchronous=0, overlapped=0)
    assert set(summary) == {"all-gather", "all-reduce"}


def test_traffic_by_part_follows_the_op_names():
    parts = hlo.traffic_by_part(TPU_HLO)
    # The matmul fusion reads f32[16,16] and writes f32[16,16], in the backward pass of self-attention.
    assert parts["self-attention scores and softmax, backward"] == 2 * 4 * 16 * 16
    # The combined all-reduce reads and writes 2*32 + 4*64 bytes; the loop's 5 trips move 2 * 40 each.
    assert parts["collectives"] >= 2 * (64 + 256) + 5 * 2 * 40
    assert parts["optimizer, EMA and the rest"] == 2 * 2 * 32 * 85  # the final copy


# TPU fuses compute into an async collective: a softmax of self-attention beside a weight gather.
FUSED_HLO = """
%gather_and_softmax (param_0: bf16[8,85], param_1: f32[4,64]) -> (bf16[32,85], f32[4,64]) {
  %param_0 = bf16[8,85]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  %param_1 = f32[4,64]{1,0} parameter(1)
  %all-gather.3 = bf16[32,85]{1,0} all-gather(%param_0), channel_id=1, dimensions={0}
  %exponential.1 = f32[4,64]{1,0} exponential(%param_1), metadata={op_name="jit(step)/jvp(UPGPT.denoise)/unet/down_blocks_0/attentions_0/transformer_blocks_0/attn1/exp"}
  ROOT %tuple.1 = (bf16[32,85]{1,0}, f32[4,64]{1,0}) tuple(%all-gather.3, %exponential.1)
}

ENTRY %main (a: bf16[8,85], b: f32[4,64]) -> (bf16[32,85], f32[4,64]) {
  %a = bf16[8,85]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  %b = f32[4,64]{1,0} parameter(1)
  ROOT %fusion.9 = (bf16[32,85]{1,0}, f32[4,64]{1,0}) fusion(%a, %b), kind=kCustom, calls=%gather_and_softmax
}
"""


# TPU's reduce-scatter: an all-reduce of the full buffer in an "all-reduce-scatter" fusion, which
# returns each chip's slice.
REDUCE_SCATTER_HLO = """
%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%all-reduce-scatter.7 (input_0: bf16[64,32]) -> bf16[16,32] {
  %input_0 = bf16[64,32]{1,0} parameter(0)
  %all-reduce.3 = bf16[64,32]{1,0} all-reduce(%input_0), channel_id=4, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %dynamic-slice.1 = bf16[16,32]{1,0} dynamic-slice(%all-reduce.3), dynamic_slice_sizes={16,32}
}

ENTRY %main (g: bf16[64,32]) -> bf16[16,32] {
  %g = bf16[64,32]{1,0} parameter(0)
  ROOT %fusion.43 = bf16[16,32]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.7
}
"""


def test_tpu_all_reduce_scatter_fusion_is_a_reduce_scatter():
    summary = hlo.summarize(hlo.collectives(REDUCE_SCATTER_HLO))
    assert summary == {"reduce-scatter": dict(count=1, bytes=2 * 64 * 32, asynchronous=0, overlapped=0)}


def test_compute_fused_into_a_collective_counts_as_its_model_part():
    parts = hlo.traffic_by_part(FUSED_HLO)
    # Reads f32[4,64] (the on-chip bf16 operand is free), writes bf16[32,85] and f32[4,64].
    assert parts == {"self-attention scores and softmax, forward": 2 * 4 * 64 * 4 + 2 * 32 * 85}
    assert hlo.summarize(hlo.collectives(FUSED_HLO))["all-gather"]["count"] == 1


def test_gpu_style_async_pair_without_compute_is_not_overlapped():
    summary = hlo.summarize(hlo.collectives(GPU_HLO))
    assert summary["all-gather"] == dict(count=1, bytes=4 * 16 * 8, asynchronous=1, overlapped=0)
    assert summary["reduce-scatter"] == dict(count=1, bytes=4 * 64, asynchronous=0, overlapped=0)


def test_roofline_is_the_slower_of_compute_and_memory():
    # v5e: 197 TFLOP/s, 819 GB/s. 0.1 s of compute, 0.2 s of memory traffic: memory-bound, 0.2 s.
    estimate = roofline(flops=19.7e12, bytes_accessed=163.8e9, model_flops=9.85e12, examples=32,
                        device_kind="TPU v5 lite")
    assert estimate["bound"] == "memory"
    assert estimate["step_s"] == pytest.approx(0.2)
    assert estimate["img_per_s_per_chip"] == pytest.approx(160.0)
    assert estimate["mfu"] == pytest.approx(9.85e12 / 0.2 / 197e12)
    assert estimate["hbm"] is None
    assert roofline(1e12, 1e9, 1e12, 8, "cpu") is None


def test_roofline_counts_flops_xla_cannot_see_and_the_hbm_traffic_apart():
    # A Pallas kernel without a cost estimate hides its FLOPs from XLA: the analytic count stands.
    # Its second estimate takes the HBM traffic: 40.95 GB at 819 GB/s is 0.05 s < 0.1 s of compute.
    estimate = roofline(flops=1e12, bytes_accessed=163.8e9, model_flops=19.7e12, examples=32,
                        device_kind="TPU v5 lite", hbm_traffic=40.95e9)
    assert estimate["compute_s"] == pytest.approx(0.1) and estimate["step_s"] == pytest.approx(0.2)
    assert estimate["hbm"]["bound"] == "compute" and estimate["hbm"]["step_s"] == pytest.approx(0.1)
    assert estimate["hbm"]["memory_s"] == pytest.approx(0.05) and estimate["hbm"]["mfu"] == pytest.approx(1.0)


MICRO = ["--config.model.image_size=32,24", "--config.model.unet.channels=16", "--config.model.unet.channel_mult=1,2",
         "--config.model.unet.num_res_blocks=1", "--config.model.unet.attention_levels=1,",
         "--config.model.unet.num_heads=2", "--config.model.vae.channel_mult=1,2",
         "--config.model.standardize_conditions=False"]


def micro_config():
    config = get_config()
    config.model.update(image_size=(32, 24), standardize_conditions=False)
    config.model.unet.update(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2)
    config.model.vae.channel_mult = (1, 2)
    return config


def run_aot(*args: str, devices: int = 1) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    process = subprocess.run([sys.executable, "-m", "upgpt_jax.aot", "--config", "configs/synthetic_tiny.py",
                              *MICRO, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    lines = process.stdout.strip().splitlines()
    assert lines[0].startswith("| what |") and lines[2].startswith(("| train |", "| sample |"))
    return json.loads(lines[-1])


def test_sampler_on_4_cpu_devices_counts_every_loop_step():
    """XLA's cost analysis counts a loop body once; the report adds the other trips, so two more
    steps add two guided UNet evaluations (2 branches at text guidance 3)."""
    two, four = (run_aot("--topology", "local", "--what", "sample", "--per_chip_batch", "1", "--config.mesh.fsdp=2",
                         f"--config.sampling.num_steps={steps}", "--config.sampling.guidance.text=3", devices=4)
                 for steps in (2, 4))
    assert four["chips"] == 4 and four["global_batch"] == 4 and four["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    per_step = unet_forward_flops(micro_config().model) * 2 * 1  # 2 branches x 1 image per chip
    assert four["model_flops"] - two["model_flops"] == pytest.approx(2 * per_step)
    assert four["xla_flops"] - two["xla_flops"] == pytest.approx(2 * per_step, rel=0.25)
    memory = four["memory_gib"]
    assert memory["total"] == pytest.approx(memory["arguments"] + memory["outputs"] - memory["aliased"]
                                            + memory["temporaries"])
    assert four["collectives"]["all-gather"]["count"] > 0  # FSDP-sharded weights are gathered
    assert four["roofline"] is None and four["fits"] is None  # a CPU has no peak or HBM figures


def test_bad_topology_is_one_line():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.run([sys.executable, "-m", "upgpt_jax.aot", "--config", "configs/synthetic_tiny.py",
                              "--topology", "nonsense"], cwd=REPO, env=env, capture_output=True, text=True)
    assert process.returncode != 0
    assert process.stderr.strip().splitlines()[-1].startswith("error: --topology 'nonsense'")
    assert "Traceback" not in process.stderr


def test_train_step_for_tpu_v5e_2x2():
    pytest.importorskip("libtpu", reason="libtpu (the tpu extra) compiles for TPU topologies")
    result = run_aot("--topology", "v5e:2x2", "--per_chip_batch", "2", "--config.mesh.fsdp=2",
                     "--config.model.dtype=bfloat16")
    assert result["chips"] == 4 and result["device_kind"] == "TPU v5 lite"
    assert result["hbm_capacity_gib"] == pytest.approx(16.0) and result["fits"] is True
    # The analytic count, independently: FLOPs per example x examples per chip. XLA counts only the
    # conv taps on real input (flops.py) but also elementwise work (norms, softmax, the optimizer),
    # which weighs more in a model this small: within 25% (upgpt_256 on v5e: 3.10 vs 3.26 TFLOP).
    assert result["model_flops"] == pytest.approx(train_step_flops(micro_config().model) * 2)
    assert result["xla_flops"] == pytest.approx(result["model_flops"], rel=0.25)
    roof = result["roofline"]
    compute_s = max(result["xla_flops"], result["model_flops"]) / 197e12
    assert roof["step_s"] == pytest.approx(max(compute_s, result["xla_bytes"] / 819e9))
    hbm_traffic = sum(result["traffic_gb_by_part"].values()) * 1e9
    assert 0 < hbm_traffic <= result["xla_bytes"]
    assert roof["hbm"]["step_s"] == pytest.approx(max(compute_s, hbm_traffic / 819e9))
    assert roof["mfu"] == pytest.approx(result["model_flops"] / roof["step_s"] / 197e12)
    assert result["collectives"]["all-gather"]["count"] > 0


@pytest.mark.parametrize("chip", ["v5e", "v5p", "v6e", "v4"])
def test_pod_configs_describe_their_slice(chip):
    import importlib

    from upgpt_jax.sharding import mesh_shape

    module = importlib.import_module(f"configs.pods.upgpt_256_{chip}")
    config, pod = module.get_config(), module.get_config().pod
    assert pod.topology.startswith(f"{chip}:")
    assert config.train.batch_size == pod.per_chip_batch * pod.chips
    assert config.model.dtype == "bfloat16" and config.model.param_dtype == "float32"
    assert mesh_shape(config.mesh, pod.chips)[1] == config.mesh.fsdp
    # The docstring launches this file and gives the figures of its AOT compile.
    assert f"--config configs/pods/upgpt_256_{chip}.py" in module.__doc__ and "AOT_FIGURES" not in module.__doc__
    if importlib.util.find_spec("libtpu"):
        from upgpt_jax.aot.programs import topology_devices

        assert len(topology_devices(pod.topology)) == pod.chips
