"""What a compiled program needs per chip, and the step time a roofline of it implies.

XLA reports per-chip memory (`memory_analysis`) and per-chip FLOPs and bytes accessed
(`cost_analysis`) of an SPMD program, but no usable time (its "optimal_seconds" is negative or
absent for the train step). The time here is a roofline ESTIMATE: the larger of the FLOPs over
the chip's peak and XLA's bytes over its HBM bandwidth (`upgpt_jax.hardware`). The FLOPs are XLA's
count or the analytic model count, whichever is larger: XLA cannot see inside a Pallas kernel that
gives no cost estimate (ours give one, `models/flash_attention.py`), and would count its work as free. It ignores
collectives' own time (listed apart, with whether they overlap compute) and assumes every kernel
runs at peak, so it is a bound to compare plans by, not a measurement. MFU uses the analytic model
FLOPs (`upgpt_jax.flops`), not XLA's, so remat's recomputation does not count as useful work.

XLA's "bytes accessed" also counts reads of arrays that memory-space assignment has already put in
on-chip memory (and the copies that put them there). A second estimate, `hbm`, takes only the HBM
traffic of the scheduled program (`hlo.traffic_by_part`: top-level instructions' operands and
results outside on-chip memory, plus the HBM <-> on-chip copies): the bound if those on-chip reads
cost nothing. The truth on a chip lies between the two.
"""
from __future__ import annotations

from typing import Any

from upgpt_jax.aot.hlo import collectives, parse_computations, summarize, traffic_by_part
from upgpt_jax.hardware import GIB, chip_for


def memory_per_chip(compiled: Any) -> dict[str, float]:
    """HBM bytes per chip: arguments, outputs, temporaries and their total (donated outputs alias
    their arguments and are counted once), plus the generated code."""
    stats = compiled.memory_analysis()
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
             + stats.temp_size_in_bytes)
    return dict(arguments=float(stats.argument_size_in_bytes), outputs=float(stats.output_size_in_bytes),
                aliased=float(stats.alias_size_in_bytes), temporaries=float(stats.temp_size_in_bytes),
                code=float(stats.generated_code_size_in_bytes), total=float(total))


def xla_cost(compiled: Any) -> tuple[float, float]:
    """(FLOPs, bytes accessed) per chip of one call, as XLA's cost analysis counts them."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def roofline(flops: float, bytes_accessed: float, model_flops: float, examples: float, device_kind: str,
             hbm_traffic: float | None = None) -> dict[str, Any] | None:
    """Per-chip roofline estimate of one call; None when the chip's figures are unknown (CPU).
    With `hbm_traffic` (bytes), `hbm` holds the same estimate with it in place of XLA's bytes."""
    chip = chip_for(device_kind)
    if chip is None:
        return None
    compute_s = max(flops, model_flops) / chip.peak_bf16_flops

    def estimate(moved: float) -> dict[str, Any]:
        memory_s = moved / chip.hbm_bytes_per_s
        seconds = max(compute_s, memory_s)
        return dict(memory_s=memory_s, step_s=seconds, bound="compute" if compute_s >= memory_s else "memory",
                    img_per_s_per_chip=examples / seconds if seconds else None,
                    mfu=model_flops / seconds / chip.peak_bf16_flops if seconds else None)

    return dict(chip=chip.name, peak_tflops=chip.peak_bf16_flops / 1e12, hbm_gb_per_s=chip.hbm_bytes_per_s / 1e9,
                hbm_gib=chip.hbm_bytes / GIB, compute_s=compute_s, **estimate(bytes_accessed),
                hbm=estimate(hbm_traffic) if hbm_traffic is not None else None)


def analyse(compiled: Any, *, chips: int, device_kind: str, global_batch: int, model_flops: float,
            loop_body: Any = None, loop_trips: int = 1) -> dict[str, Any]:
    """Everything `python -m upgpt_jax.aot` reports about one compiled program (per chip).

    `loop_body`: the compiled body of the program's loop, which XLA's cost analysis counts once;
    its cost is added `loop_trips - 1` more times."""
    memory = memory_per_chip(compiled)
    flops, bytes_accessed = xla_cost(compiled)
    if loop_body is not None:
        body_flops, body_bytes = xla_cost(loop_body)
        flops, bytes_accessed = flops + (loop_trips - 1) * body_flops, bytes_accessed + (loop_trips - 1) * body_bytes
    per_chip_model_flops = model_flops / chips
    parsed = parse_computations(compiled.as_text())
    traffic = traffic_by_part(parsed)
    # A loop body's traffic (the sampler's) is in the program once per trip: the parser counts trips.
    estimate = roofline(flops, bytes_accessed, per_chip_model_flops, global_batch / chips, device_kind,
                        hbm_traffic=sum(traffic.values()))
    chip = chip_for(device_kind)
    capacity = chip.hbm_bytes if chip else None
    return dict(
        memory_gib={key: value / GIB for key, value in memory.items()},
        hbm_capacity_gib=capacity / GIB if capacity else None,
        fits=memory["total"] <= capacity if capacity else None,
        xla_flops=flops, xla_bytes=bytes_accessed, model_flops=per_chip_model_flops,
        roofline=estimate,
        collectives=summarize(collectives(parsed)),
        traffic_gb_by_part={part: moved / 1e9 for part, moved in traffic.items()},
    )
