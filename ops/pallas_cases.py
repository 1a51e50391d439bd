"""Random ragged paged-attention steps for the kernel tests and benchmarks.

Every block of the pool that the step must not read is filled with NaN (unused blocks, the
tail of each sequence's last block, block-table entries past a sequence's blocks point at
poisoned blocks), so a kernel that reads a wrong element produces NaN instead of a plausible
number. ``clean`` returns the same pool with the poison zeroed, for the XLA reference (which
multiplies masked probabilities by every V in the table and so cannot take NaN).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ops.attention_metadata import AttentionMetadata


@dataclasses.dataclass
class Case:
    q: jax.Array  # [T, num_heads, head_dim]
    k_cache: jax.Array  # [num_blocks, block_size, kv_heads, head_dim]
    v_cache: jax.Array
    md: AttentionMetadata
    k_new: jax.Array  # [T, kv_heads, head_dim], this step's K/V (already in the pool)
    v_new: jax.Array

    def clean(self) -> tuple[jax.Array, jax.Array]:
        return jnp.nan_to_num(self.k_cache, nan=0.0), jnp.nan_to_num(self.v_cache, nan=0.0)


def make_case(
    seed: int,
    q_lens: list[int],
    seq_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: Any = jnp.float32,
    pad_tokens: int = 0,
    spare_blocks: int = 3,
    extra_table_width: int = 1,
    poison: bool = True,
) -> Case:
    """A step whose sequence ``i`` has ``q_lens[i]`` new tokens and context ``seq_lens[i]``.

    A sequence with ``q_len == 0 and seq_len == 0`` is a padded slot. Blocks are assigned in
    a random order; ``pad_tokens`` padded tokens follow the real ones.
    """
    assert len(q_lens) == len(seq_lens)
    assert all(0 <= q <= s for q, s in zip(q_lens, seq_lens, strict=True))
    rng = np.random.default_rng(seed)
    need = [-(-s // block_size) for s in seq_lens]
    width = max(max(need), 1) + extra_table_width
    num_blocks = sum(need) + spare_blocks
    order = rng.permutation(num_blocks)
    used, spare = order[: sum(need)], order[sum(need) :]
    table = np.empty((len(q_lens), width), np.int32)
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = used[start : start + n]
        table[i, n:] = rng.choice(spare, width - n) if len(spare) else 0
        start += n

    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k = rng.standard_normal(shape, np.float32)
    v = rng.standard_normal(shape, np.float32)
    if poison:
        live = np.zeros((num_blocks, block_size), bool)
        for i, s in enumerate(seq_lens):
            for pos in range(s):
                live[table[i, pos // block_size], pos % block_size] = True
        k[~live] = np.nan
        v[~live] = np.nan

    num_real = sum(q_lens)
    num_tokens = num_real + pad_tokens
    q = rng.standard_normal((num_tokens, num_heads, head_dim), np.float32)
    if poison:
        q[num_real:] = np.nan
    slots = np.full(num_tokens, -1, np.int32)
    k_new = np.zeros((num_tokens, num_kv_heads, head_dim), np.float32)
    v_new = np.zeros_like(k_new)
    t = 0
    for i, (ql, s) in enumerate(zip(q_lens, seq_lens, strict=True)):
        for j in range(ql):
            pos = s - ql + j
            blk, off = table[i, pos // block_size], pos % block_size
            slots[t] = blk * block_size + off
            k_new[t], v_new[t] = k[blk, off], v[blk, off]
            t += 1

    md = AttentionMetadata(
        slot_mapping=jnp.asarray(slots),
        block_tables=jnp.asarray(table),
        seq_lens=jnp.asarray(seq_lens, jnp.int32),
        query_start_loc=jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32),
        max_query_len=max(max(q_lens), 1),
    )
    return Case(
        q=jnp.asarray(q, dtype),
        k_cache=jnp.asarray(k, dtype),
        v_cache=jnp.asarray(v, dtype),
        md=md,
        k_new=jnp.asarray(k_new, dtype),
        v_new=jnp.asarray(v_new, dtype),
    )


def relative_error(out: jax.typing.ArrayLike, ref: jax.typing.ArrayLike) -> float:
    out64 = np.asarray(out, np.float64)
    ref64 = np.asarray(ref, np.float64)
    return float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), 1e-30))


def pool_copies(hlo_text: str, pool_elements: int) -> list[str]:
    """Instructions of compiled HLO that copy or transpose a buffer at least pool-sized."""
    found = []
    for line in hlo_text.splitlines():
        m = re.search(r"= \w+\[([\d,]+)\]\{[^}]*\} (copy|transpose)\(", line)
        if m and np.prod([int(d) for d in m.group(1).split(",")]) >= pool_elements:
            found.append(line.strip())
    return found
