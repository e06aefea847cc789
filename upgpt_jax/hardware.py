"""Published per-chip figures of the accelerators we plan for: dense bf16 peak, HBM size and bandwidth.

Why a table: MFU (trainer logs, benchmarks) and the ahead-of-time roofline (`upgpt_jax.aot`) need
the chip's peak FLOP/s and memory bandwidth, which no JAX API reports. Figures are the vendors'
data-sheet numbers per chip (one TPU chip = one JAX device; one GPU = one device); HBM is what the
chip has, not what XLA may use (runtime reserves a little).
"""
from __future__ import annotations

import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_bf16_flops: float  # dense FLOP/s
    hbm_bytes: float
    hbm_bytes_per_s: float


# Matched against the lower-cased `device_kind` by substring, first match wins (so "tpu v5 lite",
# v5e's kind, comes before "tpu v5", v5p's).
CHIPS: tuple[tuple[str, Chip], ...] = (
    ("tpu v5 lite", Chip("v5e", 197e12, 16 * GIB, 819e9)),
    ("tpu v5e", Chip("v5e", 197e12, 16 * GIB, 819e9)),
    ("tpu v5p", Chip("v5p", 459e12, 95 * GIB, 2765e9)),
    ("tpu v5", Chip("v5p", 459e12, 95 * GIB, 2765e9)),
    ("tpu v6 lite", Chip("v6e", 918e12, 32 * GIB, 1640e9)),
    ("tpu v6e", Chip("v6e", 918e12, 32 * GIB, 1640e9)),
    ("tpu v4", Chip("v4", 275e12, 32 * GIB, 1228e9)),
    ("h100", Chip("H100 SXM", 989e12, 80e9, 3350e9)),  # the PCIe card is lower (756 TFLOP/s): pass a peak
    ("h200", Chip("H200", 989e12, 141e9, 4800e9)),
    ("a100", Chip("A100", 312e12, 80e9, 2039e9)),
)


def chip_for(device_kind: str) -> Chip | None:
    """The chip whose figures apply to a JAX `device_kind` ("TPU v5 lite", "NVIDIA H100 80GB HBM3"),
    or None (e.g. "cpu": no meaningful peak, so no MFU)."""
    kind = device_kind.lower()
    return next((chip for key, chip in CHIPS if key in kind), None)


def peak_flops_per_device(device_kind: str, override_tflops: float | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of one device of `device_kind`; `override_tflops` wins when given."""
    if override_tflops:
        return override_tflops * 1e12
    chip = chip_for(device_kind)
    return chip.peak_bf16_flops if chip else None
