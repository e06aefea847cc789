"""Fused (flash) attention on TPU: the attention scores never leave on-chip memory.

Why: at the released size the UNet's first level attends over 32x24 = 768 tokens with 8 heads of
dim 28, and XLA writes those scores and their softmax to HBM in float32 and reads them back in the
backward pass: 14.3 of the ~38 GB each v5e chip moves per train step at 16 examples (AOT compile,
benchmarks/RESULTS.md), for a model that is memory-bound.

Why a kernel of our own rather than `jax.experimental.pallas.ops.tpu.flash_attention`: that one
saves its softmax statistics for the backward pass as two float32 (B, heads, T, 128) arrays, 128
lanes where one value is needed (18x the bytes of the attention output itself), and broadcasts the
backward's row sums the same way: most of the 7.9 GB its self-attention moved per v6e chip per step.
This kernel keeps all the keys of one (example, head) in VMEM (768 tokens: 43 KB in bfloat16), so
its softmax is exact in one pass and the backward pass recomputes it from q and k: nothing but q,
k, v and the output is saved. On the v6e-256 plan the attention instructions' HBM traffic fell from
9.3 to 0.4 GB per chip per step, and the whole step's from 30.9 to 20.1 GB (benchmarks/RESULTS.md).

Layout: (batch, heads, head_dim, tokens). TPU memory tiles an array's last dim in 128 lanes, so
tokens go there and the head dim (28) is the sublane dim. Working in that transposed space keeps
every product a plain or rhs-transposed matmul: S^T = K Q^T (keys x queries), the softmax runs
over S^T's rows (a reduction over sublanes that leaves per-query rows), O^T = V^T P^T. Queries are
tiled in blocks of 128 or 256 lanes, or taken whole (the deeper levels' 192 and 48 tokens).

The choice of kernel is made when the program is lowered (`lax.platform_dependent`): on every
other platform, and for lengths whose blocks would not fit in VMEM, the same call is
`jax.nn.dot_product_attention`. The kernel is not XLA-partitionable, so it runs on each device's
shard of the batch (`sharding.map_shards`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from upgpt_jax.sharding import map_shards

FLASH = "flash"
_LANES = 128  # TPU vector width: the query block is a multiple of it or all queries
_SCORES_VMEM_BYTES = 2 << 20  # one float32 (keys x query block) score tile; the backward holds ~4
# (batch, length, heads, head_dim): the logical names of the attention operands' dimensions.
_HEAD_LAYOUT = ("batch", "activation_length", "activation_heads", "activation_kv")
_CONTRACT_LAST = (((1,), (1,)), ((), ()))  # a @ b^T


def _query_block(query_length: int, key_length: int) -> int | None:
    """The query block, in lanes: 256 or 128 when they tile the queries, else all of them; None when
    its float32 (keys x block) score tile would not fit in `_SCORES_VMEM_BYTES`."""
    fitting = [block for block in (2 * _LANES, _LANES, query_length)
               if query_length % block == 0 and key_length * block * 4 <= _SCORES_VMEM_BYTES]
    return fitting[0] if fitting else None


def flash_applies(query_length: int, key_length: int) -> bool:
    """Whether the kernel can tile these lengths (all keys of one example and head in one block)."""
    return _query_block(query_length, key_length) is not None


def _tokens_first(array_t: jax.Array) -> jax.Array:
    """(head_dim, tokens) -> (tokens, head_dim): a small in-VMEM transpose, taken in float32."""
    return array_t.astype(jnp.float32).T.astype(array_t.dtype)


def _probabilities_t(query_t: jax.Array, key_t: jax.Array, scale: float) -> jax.Array:
    """P^T (keys x queries), float32: the softmax over keys of the scaled scores, from Q^T
    (head_dim x queries) and K^T (head_dim x keys)."""
    scores_t = jnp.dot(_tokens_first(key_t), query_t, preferred_element_type=jnp.float32) * scale
    weights_t = jnp.exp(scores_t - jnp.max(scores_t, axis=0, keepdims=True))
    return weights_t / jnp.sum(weights_t, axis=0, keepdims=True)


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, *, scale: float) -> None:
    probabilities_t = _probabilities_t(q_ref[...], k_ref[...], scale)
    o_ref[...] = jnp.dot(v_ref[...], probabilities_t.astype(v_ref.dtype),
                         preferred_element_type=jnp.float32).astype(o_ref.dtype)


def _backward_kernel(q_ref, k_ref, v_ref, o_ref, do_ref, dq_ref, dk_ref, dv_ref, dk_sum, dv_sum, *,
                     scale: float) -> None:
    """One query block's gradients: dQ^T for the block, dK^T and dV^T summed over the blocks (the
    grid's last, sequential axis) in float32 scratch."""
    block = pl.program_id(2)

    @pl.when(block == 0)
    def _start():
        dk_sum[...] = jnp.zeros_like(dk_sum)
        dv_sum[...] = jnp.zeros_like(dv_sum)

    query_t, key_t, value_t, grad_out_t = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    low = key_t.dtype
    probabilities_t = _probabilities_t(query_t, key_t, scale)
    dv_sum[...] += jax.lax.dot_general(grad_out_t, probabilities_t.astype(low), _CONTRACT_LAST,
                                       preferred_element_type=jnp.float32)
    grad_probabilities_t = jnp.dot(_tokens_first(value_t), grad_out_t, preferred_element_type=jnp.float32)
    # Softmax backward: dS = P * (dP - rowsum(dO * O)), the row sums per query.
    row_sums = jnp.sum(grad_out_t.astype(jnp.float32) * o_ref[...].astype(jnp.float32), axis=0, keepdims=True)
    grad_scores_t = (probabilities_t * (grad_probabilities_t - row_sums) * scale).astype(low)
    dq_ref[...] = jnp.dot(key_t, grad_scores_t, preferred_element_type=jnp.float32).astype(dq_ref.dtype)
    dk_sum[...] += jax.lax.dot_general(query_t, grad_scores_t, _CONTRACT_LAST, preferred_element_type=jnp.float32)

    @pl.when(block == pl.num_programs(2) - 1)
    def _finish():
        dk_ref[...] = dk_sum[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_sum[...].astype(dv_ref.dtype)


def _specs(query_t: jax.Array, key_t: jax.Array) -> tuple[tuple[int, ...], pl.BlockSpec, pl.BlockSpec]:
    """The grid (batch, heads, query blocks) and the block specs of query-shaped and key-shaped
    operands (one example and head; a query block, or all keys)."""
    batch, heads, head_dim, query_length = query_t.shape
    key_length = key_t.shape[-1]
    block = _query_block(query_length, key_length)
    query_spec = pl.BlockSpec((None, None, head_dim, block), lambda b, h, i: (b, h, 0, i))
    key_spec = pl.BlockSpec((None, None, head_dim, key_length), lambda b, h, i: (b, h, 0, 0))
    return (batch, heads, query_length // block), query_spec, key_spec


def _cost(query_t: jax.Array, key_t: jax.Array, matmuls: int, *arrays: jax.Array) -> pl.CostEstimate:
    """What the kernel computes and moves, for XLA's cost analysis (it cannot see inside)."""
    batch, heads, head_dim, query_length = query_t.shape
    pairs = batch * heads * query_length * key_t.shape[-1]
    return pl.CostEstimate(flops=2 * matmuls * pairs * head_dim, transcendentals=pairs,
                           bytes_accessed=sum(array.size * array.dtype.itemsize for array in arrays))


def _forward(query_t: jax.Array, key_t: jax.Array, value_t: jax.Array) -> jax.Array:
    grid, query_spec, key_spec = _specs(query_t, key_t)
    return pl.pallas_call(
        functools.partial(_forward_kernel, scale=query_t.shape[2] ** -0.5),
        out_shape=jax.ShapeDtypeStruct(query_t.shape, query_t.dtype),
        grid=grid, in_specs=[query_spec, key_spec, key_spec], out_specs=query_spec,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel")),
        cost_estimate=_cost(query_t, key_t, 2, query_t, key_t, value_t, query_t),
    )(query_t, key_t, value_t)


def _backward(query_t: jax.Array, key_t: jax.Array, value_t: jax.Array, out_t: jax.Array,
              grad_out_t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    grid, query_spec, key_spec = _specs(query_t, key_t)
    key_block = key_spec.block_shape[2:]
    return pl.pallas_call(
        functools.partial(_backward_kernel, scale=query_t.shape[2] ** -0.5),
        out_shape=[jax.ShapeDtypeStruct(array.shape, array.dtype) for array in (query_t, key_t, value_t)],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0, grid=grid,
            in_specs=[query_spec, key_spec, key_spec, query_spec, query_spec],
            out_specs=[query_spec, key_spec, key_spec],
            scratch_shapes=[pltpu.VMEM(key_block, jnp.float32), pltpu.VMEM(key_block, jnp.float32)]),
        # dK and dV sum over the query blocks: that axis runs in order on one core.
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        cost_estimate=_cost(query_t, key_t, 5, query_t, key_t, value_t, out_t, grad_out_t,
                            query_t, key_t, value_t),
    )(query_t, key_t, value_t, out_t, grad_out_t)


@jax.custom_vjp
def attention_t(query_t: jax.Array, key_t: jax.Array, value_t: jax.Array) -> jax.Array:
    """Softmax attention in the kernel's (batch, heads, head_dim, tokens) layout, scaled by
    head_dim^-1/2."""
    return _forward(query_t, key_t, value_t)


def _attention_t_forward(query_t, key_t, value_t):
    out_t = _forward(query_t, key_t, value_t)
    return out_t, (query_t, key_t, value_t, out_t)


def _attention_t_backward(saved, grad_out_t):
    return _backward(*saved, grad_out_t)


attention_t.defvjp(_attention_t_forward, _attention_t_backward)


def tpu_flash_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """The kernel on (B, T, heads, head_dim) operands, scaled by head_dim^-1/2 like
    `jax.nn.dot_product_attention`."""
    def local(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        tokens_last = lambda x: jnp.transpose(x, (0, 2, 3, 1))  # noqa: E731
        return jnp.transpose(attention_t(tokens_last(q), tokens_last(k), tokens_last(v)), (0, 3, 1, 2))

    return map_shards(local, _HEAD_LAYOUT, query, key, value)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          implementation: str | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention`, or with `implementation="flash"` the TPU kernel where it
    applies (on TPU, blocks that fit in VMEM) and XLA's attention everywhere else."""
    if implementation != FLASH:
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
    if not flash_applies(query.shape[1], key.shape[1]):
        return jax.nn.dot_product_attention(query, key, value)
    return jax.lax.platform_dependent(query, key, value, tpu=tpu_flash_attention,
                                      default=jax.nn.dot_product_attention)
