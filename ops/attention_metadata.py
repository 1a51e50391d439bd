"""What one step tells attention about its packed, ragged batch: a leaf module every backend reads.

Layout (chosen for the kernels and for tensor parallelism, see docs/architecture.md):
  - queries are packed and ragged: ``q[T, num_heads, head_dim]`` holds the new tokens of
    every sequence in the step back to back (decode tokens, prefill chunks, whole prompts);
  - each layer owns one K and one V pool ``[num_blocks, block_size, num_kv_heads, head_dim]``;
    a sequence's tokens live in the blocks its row of ``block_tables`` names, in order.

Padding: tokens past ``query_start_loc[-1]`` and sequences with ``seq_lens == 0`` are
padding; their outputs are zero and their KV writes are dropped (``slot_mapping == -1``).

Both classes are flax struct dataclasses, i.e. registered pytrees: a field added here travels
through jit, ``shard_map`` and the model's layers with no other edit.
"""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class AttentionMetadata:
    """Describes one packed, ragged step over the paged cache (all int32)."""

    slot_mapping: jax.Array  # [T] flat cache slot (block * block_size + offset), -1 for padding
    block_tables: jax.Array  # [S, max_blocks_per_seq] block ids of each sequence
    seq_lens: jax.Array  # [S] context length after this step (cached + new tokens)
    query_start_loc: jax.Array  # [S + 1] offsets of each sequence's tokens in the packed batch
    max_query_len: int = struct.field(pytree_node=False, default=1)  # static bound on any q_len


@struct.dataclass
class StepPlan:
    """What a backend derives from the metadata once per step, shared by every layer.

    Backends with per-step tables (the Pallas kernels' tile tables) subclass it; the others
    use it as is.
    """

    md: AttentionMetadata
