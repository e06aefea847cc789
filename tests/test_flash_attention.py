"""models/flash_attention.py: the Pallas TPU flash-attention kernel against XLA's attention (run
in Pallas's TPU interpret mode on this CPU, whole and on each device's shard), and the program
compiled for a TPU topology really calling the kernel while the CPU program does not."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upgpt_jax.models.flash_attention import dot_product_attention, flash_applies, tpu_flash_attention

REPO = Path(__file__).resolve().parents[1]


def operands(shape=(2, 128, 2, 28), dtype=jnp.float32, key_length=None):
    """Query, key and value; keys and values `key_length` long (cross-attention) when given."""
    keys = jax.random.split(jax.random.key(0), 3)
    key_shape = shape if key_length is None else (shape[0], key_length) + shape[2:]
    return tuple(jax.random.normal(key, size, dtype) for key, size in zip(keys, (shape, key_shape, key_shape)))


def loss_and_grads(attention, query, key, value):
    """A non-linear loss, so the gradients check every output element, not just their sum."""
    loss = lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v)))  # noqa: E731
    return attention(query, key, value), jax.grad(loss, argnums=(0, 1, 2))(query, key, value)


@pytest.mark.parametrize("shape, key_length", [
    ((2, 128, 2, 28), None),  # one 128-lane query block
    ((1, 512, 2, 28), 87),  # two 256-lane query blocks (dK, dV summed over them), the context's 87 keys
    ((1, 384, 3, 8), 384),  # three 128-lane blocks
    ((2, 48, 2, 16), 87),  # all 48 queries in one block (the deeper levels)
])
def test_kernel_equals_xla_attention_with_gradients(shape, key_length):
    import jax.experimental.pallas.tpu as pltpu

    query, key, value = operands(shape, key_length=key_length)
    with pltpu.force_tpu_interpret_mode():
        out, grads = loss_and_grads(tpu_flash_attention, query, key, value)
    ref_out, ref_grads = loss_and_grads(jax.nn.dot_product_attention, query, key, value)
    np.testing.assert_allclose(out, ref_out, atol=2e-6)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=5e-6)  # dK sums 512 queries


def test_bfloat16_kernel_within_rounding_of_float32_attention():
    """In bfloat16 (the pods' compute dtype) the kernel's matmuls take bfloat16 operands and sum in
    float32: its output stays within bfloat16 rounding of float32 attention on the same inputs."""
    import jax.experimental.pallas.tpu as pltpu

    query, key, value = operands((1, 256, 2, 28), dtype=jnp.bfloat16)
    with pltpu.force_tpu_interpret_mode():
        out = tpu_flash_attention(query, key, value)
    exact = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (query, key, value)))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), exact, atol=2e-2)


def test_lengths_the_kernel_cannot_tile_use_xla():
    # Query blocks of 256 or 128 lanes or all queries, their float32 scores against all keys of one
    # head within 2 MiB of VMEM.
    assert all(flash_applies(*lengths) for lengths in ((768, 768), (768, 87), (192, 192), (48, 87), (3072, 3072)))
    assert not flash_applies(1000, 1000) and not flash_applies(128, 8192)
    query, key, value = operands((1, 1000, 1, 8))
    np.testing.assert_array_equal(dot_product_attention(query, key, value, "flash"),
                                  jax.nn.dot_product_attention(query, key, value))


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
import jax.experimental.pallas.tpu as pltpu
from upgpt_jax.models.flash_attention import tpu_flash_attention
from upgpt_jax.sharding import activation_sharding, make_mesh
from upgpt_jax.config_base import DEFAULT_AXIS_RULES
mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
keys = jax.random.split(jax.random.key(1), 3)
q, k, v = (jax.random.normal(key, (4, 128, 2, 28)) for key in keys)
with activation_sharding(mesh, DEFAULT_AXIS_RULES), pltpu.force_tpu_interpret_mode():
    text = jax.jit(tpu_flash_attention).lower(q, k, v).as_text()
    out = jax.jit(tpu_flash_attention)(q, k, v)
assert "shard_map" in text or "manual" in text, "the kernel is not mapped over the shards"
np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v), atol=2e-6)
print("ok")
"""


def test_kernel_runs_on_each_shard_of_the_batch():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", SHARDED], env=env, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_tpu_program_calls_the_kernel_and_moves_fewer_bytes():
    """Compiled for v5e:2x2 (compile-only devices) with the batch split over 4 chips, the flash
    path is the Mosaic kernel and moves a fraction of XLA's bytes (the scores stay on chip): little
    more than its operands and their gradients, as it saves no softmax statistics; the same function
    compiled for this CPU is XLA's attention."""
    pytest.importorskip("libtpu", reason="libtpu (the tpu extra) compiles for TPU topologies")
    from jax.sharding import NamedSharding, PartitionSpec

    from upgpt_jax.aot.programs import topology_devices
    from upgpt_jax.config_base import DEFAULT_AXIS_RULES
    from upgpt_jax.sharding import activation_sharding, make_mesh

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, topology_devices("v5e:2x2"))
    spec = jax.ShapeDtypeStruct((16, 768, 8, 28), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("data")))

    def compiled(implementation):
        attention = lambda q, k, v: dot_product_attention(q, k, v, implementation)  # noqa: E731
        loss = lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32) ** 2)  # noqa: E731
        with activation_sharding(mesh, DEFAULT_AXIS_RULES):
            return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec).compile()

    flash, xla = compiled("flash"), compiled(None)
    assert "tpu_custom_call" in flash.as_text() and "tpu_custom_call" not in xla.as_text()
    bytes_of = lambda program: program.cost_analysis()["bytes accessed"]  # noqa: E731
    assert bytes_of(flash) < 0.1 * bytes_of(xla)
    # Per chip: q, k, v, out, their gradients and their layout transposes, ~35 reads and writes of
    # one (4, 768, 8, 28) bfloat16 array (47 MB here). Softmax statistics saved as float32
    # (4, 8, 768, 128) arrays, as jax's kernel does, would add ~9 arrays' worth per write or read,
    # ~80 in all.
    assert bytes_of(flash) < 50 * (4 * 768 * 8 * 28 * 2)
    cpu = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, "flash")).lower(*operands()).compile()
    assert "custom_call" not in cpu.as_text()
