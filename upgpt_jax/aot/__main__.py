"""Compile the train step or the sampler for a TPU topology (or this host) and report what it needs.

    python -m upgpt_jax.aot --config configs/upgpt_256.py --topology v5e:16x16 [--per_chip_batch 16]
        [--what train|sample] [--num_slices 1] [--out aot.jsonl] [--hlo_out step.hlo] [--config.x=y ...]

TPU topologies need libtpu (`pip install -e ".[tpu]"`), not a TPU: XLA compiles for compile-only
devices of the named topology on this host. `--topology local` compiles for this process's own
devices (a GPU, or CPU devices). Prints one markdown table row and one JSON line: chips, per-chip
HBM (arguments, temporaries, total) against the chip's capacity and whether it fits, XLA's FLOPs and
bytes per chip, the HBM traffic of the scheduled program, the analytic model FLOPs, the roofline
step time from XLA's bytes and from the HBM traffic (estimates, see `upgpt_jax.aot.report`), the
img/s per chip and MFU they imply, the collectives the compiled
program runs (kind, count, bytes, how many are async and overlap compute), and compile time.
The global batch is `per_chip_batch` x chips; the mesh is the config's (`--config.mesh.fsdp=16`).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from upgpt_jax.tpu_flags import apply_libtpu_flags, config_libtpu_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file (configs/*.py).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology (v5e:16x16, v5p:4x4x4, v4:4x4x4, v6e:16x16) or "
                                 "'local'; default: the config's pod.topology (configs/pods/*).")
_WHAT = flags.DEFINE_enum("what", "train", ["train", "sample"], "The train step or the sampling function.")
_PER_CHIP_BATCH = flags.DEFINE_integer("per_chip_batch", None, "Examples per chip (global batch / chips); default: "
                                       "the config's pod.per_chip_batch, else 16.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of a multi-slice TPU job (data parallel over DCN).")
_OUT = flags.DEFINE_string("out", None, "Append the JSON line to this file.")
_HLO_OUT = flags.DEFINE_string("hlo_out", None, "Write the compiled (optimized) HLO text here.")
flags.mark_flags_as_required(["config"])

HEADER = ("| what | topology | mesh | per-chip batch | HBM GiB (args / temp / total of cap) | fits | "
          "XLA TFLOP/chip | XLA GB/chip | HBM traffic GB/chip | roofline s (bound), XLA bytes / HBM traffic | "
          "img/s/chip | MFU | collectives | compile s |")


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _both(roof: dict[str, Any], render: Any) -> str:
    """A roofline figure from XLA's bytes and from the HBM traffic (report.py), "a / b"."""
    return " / ".join(render(estimate) if estimate else "-" for estimate in (roof, roof.get("hbm")))


def _step(estimate: dict[str, Any]) -> str:
    return f"{estimate['step_s']:.3f} ({estimate['bound']})"


def _rate(estimate: dict[str, Any]) -> str:
    return f"{estimate['img_per_s_per_chip']:.1f}"


def _mfu(estimate: dict[str, Any]) -> str:
    return f"{100 * estimate['mfu']:.1f}%"


def table_row(result: dict[str, Any]) -> str:
    """One markdown row of a result (the HEADER's columns)."""
    memory, roof = result["memory_gib"], result["roofline"] or {}
    collectives = ", ".join(f"{kind} {row['count']} ({row['bytes'] / 1e9:.2f} GB, {row['overlapped']} overlapped)"
                            for kind, row in result["collectives"].items()) or "none"
    fits = {True: "yes", False: "NO", None: "-"}[result["fits"]]
    return (f"| {result['what']} | {result['topology']} ({result['chips']} chips) | {result['mesh']} | "
            f"{result['per_chip_batch']} | {memory['arguments']:.2f} / {memory['temporaries']:.2f} / "
            f"{memory['total']:.2f} of {_fmt(result['hbm_capacity_gib'], '.0f')} | {fits} | "
            f"{result['xla_flops'] / 1e12:.2f} | {result['xla_bytes'] / 1e9:.1f} | "
            f"{sum(result['traffic_gb_by_part'].values()):.1f} | {_both(roof, _step)} | {_both(roof, _rate)} | "
            f"{_both(roof, _mfu)} | {collectives} | {result['compile_s']:.0f} |")


def run(config: Any, topology: str, what: str, per_chip_batch: int, num_slices: int = 1,
        hlo_out: str | None = None) -> dict[str, Any]:
    """Builds, lowers and compiles the program; returns the report (see `upgpt_jax.aot.report.analyse`)."""
    from upgpt_jax.aot.programs import build_program, topology_devices
    from upgpt_jax.aot.report import analyse

    devices = topology_devices(topology, num_slices)
    program = build_program(config, what, devices, per_chip_batch)
    start = time.perf_counter()
    lowered = program.function.lower(*program.arguments)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    body = program.loop_body and program.loop_body.function.lower(*program.loop_body.arguments).compile()
    if hlo_out:
        with open(hlo_out, "w") as file:
            file.write(compiled.as_text())
    report = analyse(compiled, chips=len(devices), device_kind=devices[0].device_kind,
                     global_batch=program.global_batch, model_flops=program.model_flops, loop_body=body,
                     loop_trips=program.loop_trips)
    return dict(what=what, topology=topology, num_slices=num_slices, chips=len(devices),
                device_kind=devices[0].device_kind, mesh=dict(program.mesh.shape), per_chip_batch=per_chip_batch,
                global_batch=program.global_batch, dtype=config.model.dtype, remat=bool(config.model.unet.remat),
                model_flops_counts=program.describe, lower_s=lower_s, compile_s=compile_s, **report)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    pod = config.get("pod") or {}
    topology = _TOPOLOGY.value or pod.get("topology")
    per_chip_batch = _PER_CHIP_BATCH.value or pod.get("per_chip_batch", 16)
    if not topology:
        raise app.UsageError("--topology is required (the config has no pod.topology)")
    libtpu_flags = apply_libtpu_flags(config_libtpu_flags(config))  # before libtpu starts: it reads them once
    if topology != "local":
        # Compile-only TPU devices need libtpu, not the TPU backend: stay on the CPU backend so that
        # a host without TPUs does not try to open one.
        import jax

        jax.config.update("jax_platforms", "cpu")
    try:
        result = run(config, topology, _WHAT.value, per_chip_batch, _NUM_SLICES.value, _HLO_OUT.value)
    except ValueError as error:  # bad topology, batch or mesh: one line, no traceback
        sys.exit(f"error: {error}")
    result["config"] = config_flags.get_config_filename(flags.FLAGS["config"])
    result["libtpu_flags"] = libtpu_flags
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    print(table_row(result))
    line = json.dumps(result)
    print(line)
    if _OUT.value:
        with open(_OUT.value, "a") as file:
            file.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
