"""Fused (flash) attention on TPU: the attention scores never leave on-chip memory.

Why: at the released size the UNet's first level attends over 32x24 = 768 tokens with 8 heads of
dim 28, and XLA writes those scores and their softmax to HBM in float32 and reads them back in the
backward pass: 14.3 of the ~38 GB each v5e chip moves per train step at 16 examples (AOT compile,
benchmarks/RESULTS.md), for a model that is memory-bound. Pallas's TPU flash-attention kernel
keeps them in VMEM. It tiles keys and queries in blocks of 128, so it applies when both lengths
are multiples of 128 (the 768-token self-attention; not the 87-token cross-attention context nor
the deeper levels' 192 and 48 tokens, which are small). The choice of kernel is made when the
program is lowered (`lax.platform_dependent`): on every other platform, and for other lengths, the
same call is `jax.nn.dot_product_attention`. The kernel is not XLA-partitionable, so it runs on
each device's shard of the batch (`sharding.map_shards`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

from upgpt_jax.sharding import map_shards

FLASH = "flash"
_BLOCK = 128  # the kernel's smallest query and key block
# (batch, length, heads, head_dim): the logical names of the attention operands' dimensions.
_HEAD_LAYOUT = ("batch", "activation_length", "activation_heads", "activation_kv")


def flash_applies(query_length: int, key_length: int) -> bool:
    """Whether the TPU kernel can tile these lengths."""
    return query_length % _BLOCK == 0 and key_length % _BLOCK == 0


def tpu_flash_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """Pallas TPU flash attention on (B, T, heads, head_dim) operands, scaled by head_dim^-1/2
    like `jax.nn.dot_product_attention`; the kernel's own layout is (B, heads, T, head_dim)."""
    def local(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
        out = tpu_flash.flash_attention(heads_first(q), heads_first(k), heads_first(v),
                                        sm_scale=q.shape[-1] ** -0.5)
        return heads_first(out)

    return map_shards(local, _HEAD_LAYOUT, query, key, value)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          implementation: str | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention`, or with `implementation="flash"` the TPU kernel where it
    applies (on TPU, lengths multiples of 128) and XLA's attention everywhere else."""
    if implementation != FLASH:
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
    if not flash_applies(query.shape[1], key.shape[1]):
        return jax.nn.dot_product_attention(query, key, value)
    return jax.lax.platform_dependent(query, key, value, tpu=tpu_flash_attention,
                                      default=jax.nn.dot_product_attention)
