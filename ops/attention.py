"""The one attention entry point the models call, and the KV-cache write.

Layout (chosen for the kernels and for tensor parallelism, see docs/architecture.md):
  - queries are packed and ragged: ``q[T, num_heads, head_dim]`` holds the new tokens of
    every sequence in the step back to back (decode tokens, prefill chunks, whole prompts);
  - each layer owns one K and one V pool ``[num_blocks, block_size, num_kv_heads, head_dim]``;
    a sequence's tokens live in the blocks its row of ``block_tables`` names, in order.

Padding: tokens past ``query_start_loc[-1]`` and sequences with ``seq_lens == 0`` are
padding; their outputs are zero and their KV writes are dropped (``slot_mapping == -1``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class AttentionMetadata:
    """Describes one packed, ragged step over the paged cache (all int32)."""

    slot_mapping: jax.Array  # [T] flat cache slot (block * block_size + offset), -1 for padding
    block_tables: jax.Array  # [S, max_blocks_per_seq] block ids of each sequence
    seq_lens: jax.Array  # [S] context length after this step (cached + new tokens)
    query_start_loc: jax.Array  # [S + 1] offsets of each sequence's tokens in the packed batch
    max_query_len: int = struct.field(pytree_node=False, default=1)  # static bound on any q_len


BACKENDS = ("reference", "cpu", "pallas_gpu", "pallas_tpu")


def default_backend() -> str:
    """The attention backend for this platform, overridable with TESSERA_ATTENTION_BACKEND."""
    forced = os.environ.get("TESSERA_ATTENTION_BACKEND")
    if forced:
        return validate_backend(forced)
    platform = jax.default_backend()
    if platform == "gpu":
        return "pallas_gpu"
    if platform == "tpu":
        return "pallas_tpu"
    if platform == "cpu":
        return "cpu"
    return "reference"


def validate_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def write_kv(
    k_cache: jax.Array, v_cache: jax.Array, k: jax.Array, v: jax.Array, slot_mapping: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Scatters new K/V ``[T, kv_heads, head_dim]`` into their slots; padding slots are dropped.

    The scatter indexes the pool's own leading two axes (no reshaped view), so with the pool
    donated XLA updates it in place.
    """
    num_blocks, block_size = k_cache.shape[:2]
    block = jnp.where(slot_mapping < 0, num_blocks, slot_mapping // block_size)
    offset = slot_mapping % block_size
    k_cache = k_cache.at[block, offset].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[block, offset].set(v.astype(v_cache.dtype), mode="drop")
    return k_cache, v_cache


def paged_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    md: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    backend: str = "reference",
) -> jax.Array:
    """Causal attention of packed queries over their sequences' cached context.

    Query ``i`` of a sequence with ``q_len`` new tokens and context ``seq_len`` sits at
    position ``seq_len - q_len + i`` and sees keys ``0 .. that position`` (and only the
    last ``sliding_window`` of them when set). GQA/MQA: query head ``h`` reads kv head
    ``h // (num_heads // num_kv_heads)``. Returns ``[T, num_heads, head_dim]`` in q's dtype.
    """
    if backend == "reference":
        from ops.reference_attention import reference_paged_attention

        return reference_paged_attention(
            q, k_cache, v_cache, md, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap
        )
    if backend == "cpu":
        from ops.cpu_attention import cpu_paged_attention

        return cpu_paged_attention(
            q, k_cache, v_cache, md, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap
        )
    if backend == "pallas_gpu":
        from ops.pallas_gpu_attention import pallas_gpu_paged_attention

        return pallas_gpu_paged_attention(
            q, k_cache, v_cache, md, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap
        )
    if backend == "pallas_tpu":
        from ops.pallas_tpu_attention import pallas_tpu_paged_attention

        return pallas_tpu_paged_attention(
            q, k_cache, v_cache, md, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap
        )
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
