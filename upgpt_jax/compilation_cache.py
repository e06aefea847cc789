"""The persistent XLA compilation cache shared by the entry points (train, sample, benchmarks).

JAX_COMPILATION_CACHE_DIR may be a gs:// URL (e.g. one cache for every host of a pod): JAX opens a
non-local cache folder through etils.epath (gcsfs), which this package installs.
"""
import os
import pathlib

DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "upgpt_jax" / "jax_cache"


def enable_compilation_cache() -> None:
    """Persist every compilation (min compile time 0), unless the environment chose otherwise, so a
    restarted run or a second sampling command does not compile again."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(DEFAULT_CACHE)))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
