"""libtpu's compiler flags from a config (`config.pod.libtpu_flags`), set before libtpu starts.

libtpu reads its flags from the environment variable LIBTPU_INIT_ARGS once, when JAX first creates
the TPU backend (or, for `python -m upgpt_jax.aot`, the compile-only topology). The pod configs
carry the flags their AOT figures were compiled with (none today), so a training launch gets the
same program: train.py and the AOT command call `apply_libtpu_flags` before anything touches a device.
Flags the user already put in LIBTPU_INIT_ARGS come after the config's and so win (libtpu keeps
the last value of a flag). On a machine without libtpu the variable is read by nothing.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections

from upgpt_jax.cli_errors import BadInput

ENV_VAR = "LIBTPU_INIT_ARGS"

# XLA's asynchronous collective fusion on TPU, as MaxText launches its pod runs: the FSDP weight
# all-gathers run as async collectives that the scheduler overlaps with the layers' compute instead
# of blocking each layer. Measured on the v6e-256 plan (benchmarks/RESULTS.md): asynchronous, but
# 3.4 GB more HBM traffic per chip, so the pod configs leave them out until a TPU times both.
ASYNC_COLLECTIVE_FLAGS = (
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
)


def config_libtpu_flags(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`config.pod.libtpu_flags`, or () for a config without a pod plan."""
    pod = config.get("pod")
    return tuple(pod.get("libtpu_flags", ())) if pod is not None else ()


def apply_libtpu_flags(flags: Sequence[str], environ: dict[str, str] | None = None) -> str:
    """Prepend `flags` to LIBTPU_INIT_ARGS in `environ` (default os.environ) and return its value.

    Raises BadInput (a ValueError) for a flag that is not `--name=value` (libtpu would abort the process at
    start-up with an unreadable log) and RuntimeError when JAX's backends already exist, since
    libtpu would then never see the flags."""
    environ = os.environ if environ is None else environ
    for flag in flags:
        if not (flag.startswith("--") and "=" in flag and " " not in flag):
            raise BadInput(f"config.pod.libtpu_flags: {flag!r} is not a '--name=value' libtpu flag")
    if not flags:
        return environ.get(ENV_VAR, "")
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("config.pod.libtpu_flags must be applied before JAX creates its backends")
    value = " ".join([*flags, environ.get(ENV_VAR, "")]).strip()
    environ[ENV_VAR] = value
    return value
