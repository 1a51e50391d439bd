"""Work decomposition shared by the Pallas attention kernels (GPU and TPU).

A step's packed queries are cut into *query tiles*: up to ``block_q`` consecutive new tokens of
one sequence. A kernel program handles one tile for one kv head (the tile's rows are its tokens
times the GQA group's query heads, so K/V is read once for the whole group) and, when the KV
sequence is split across programs (flash-decoding), one share of the tile's keys. Everything
here is plain XLA on small int32 arrays, computed once per step; XLA's CSE shares it between
the layers of a model.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ops.attention_metadata import AttentionMetadata

# Columns of the int32 tile table [num_tiles, TILE_FIELDS].
TILE_SEQ = 0  # row of block_tables / seq_lens this tile belongs to
TILE_TOKEN = 1  # index in the packed batch of the tile's first token
TILE_COUNT = 2  # tokens in the tile (0 for an unused tile)
TILE_POS = 3  # position in its sequence of the tile's first token
TILE_FIELDS = 4

# Finite "minus infinity" for masked logits (in log2 units): exp2(MASKED - m) underflows to 0 for
# any real m, and a row that has seen only masked keys keeps finite m and l (no inf - inf).
MASKED = -1.0e30
LOG2E = math.log2(math.e)  # the kernels keep scores in log2 units and exponentiate with exp2


def log2_scores(s: jax.Array, scale: float, soft_cap: float | None) -> jax.Array:
    """Raw ``q . k`` scores in log2 units, soft-capped (``soft_cap * tanh(s / soft_cap)``) when asked."""
    if soft_cap is None:
        return s * (scale * LOG2E)
    return jnp.tanh(s * (scale / soft_cap)) * (soft_cap * LOG2E)


def visible_keys(kpos: jax.Array, q_pos: jax.Array, kv_end: jax.Array, sliding_window: int | None) -> jax.Array:
    """Whether each query sees each key: causal, inside the context and inside the sliding window."""
    seen = (kpos <= q_pos) & (kpos < kv_end)
    if sliding_window is not None:
        seen &= kpos > q_pos - sliding_window
    return seen


def max_query_tiles(num_tokens: int, num_seqs: int, block_q: int) -> int:
    """Static bound on sum_s cdiv(q_len_s, block_q) given sum_s q_len_s <= num_tokens."""
    busy = min(num_seqs, num_tokens)
    return max(1, (num_tokens + busy * (block_q - 1)) // block_q)


def build_tile_table(md: AttentionMetadata, num_tokens: int, block_q: int) -> jax.Array:
    """The int32 tile table ``[max_query_tiles, TILE_FIELDS]``; unused tiles have count 0."""
    num_seqs = md.seq_lens.shape[0]
    num_tiles = max_query_tiles(num_tokens, num_seqs, block_q)
    starts = md.query_start_loc[:-1]
    q_lens = md.query_start_loc[1:] - starts
    tiles_per_seq = (q_lens + block_q - 1) // block_q
    tiles_end = jnp.cumsum(tiles_per_seq)
    tile = jnp.arange(num_tiles, dtype=jnp.int32)
    # compare_all: one fused kernel on the GPU instead of a loop of tiny ones.
    found = jnp.searchsorted(tiles_end, tile, side="right", method="compare_all")
    seq = jnp.minimum(found, num_seqs - 1)
    seq = seq.astype(jnp.int32)
    q_off = (tile - (tiles_end[seq] - tiles_per_seq[seq])) * block_q
    used = tile < tiles_end[-1]
    count = jnp.where(used, jnp.clip(q_lens[seq] - q_off, 0, block_q), 0)
    first_pos = md.seq_lens[seq] - q_lens[seq] + q_off
    table = jnp.stack([seq, starts[seq] + q_off, count, first_pos], axis=1)
    return jnp.where(used[:, None], table, 0).astype(jnp.int32)


def pick_block_q(max_query_len: int, group: int, target_rows: int) -> int:
    """Tokens per query tile: enough to give the MMA ``target_rows`` rows, never more than needed."""
    if max_query_len <= 1:
        return 1
    block_q = max(1, target_rows // group)
    return min(block_q, next_pow2(max_query_len))


def pick_kv_splits(programs: int, max_chunks: int, target_programs: int) -> int:
    """Flash-decoding: split each tile's keys when the grid is too small to fill the chip."""
    if programs >= target_programs:
        return 1
    return max(1, min(max_chunks, -(-target_programs // programs)))


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def kv_chunk_bounds(
    first_pos: jax.Array,
    count: jax.Array,
    block_k: int,
    sliding_window: int | None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Chunk ranges of ``block_k`` keys a tile must visit: ``lo <= free_lo <= free_hi <= hi``.

    Chunks in ``[free_lo, free_hi)`` are visible to every row of the tile (no mask needed);
    the others straddle the causal diagonal, the end of the context or the window's start.
    """
    last_pos = first_pos + count - 1
    kv_end = last_pos + 1
    hi = (kv_end + block_k - 1) // block_k
    free_hi = (first_pos + 1) // block_k
    if sliding_window is None:
        lo = jnp.zeros_like(first_pos)
        free_lo = lo
    else:
        lo = jnp.maximum(first_pos - sliding_window + 1, 0) // block_k
        free_lo = (jnp.maximum(last_pos - sliding_window + 1, 0) + block_k - 1) // block_k
    free_lo = jnp.minimum(free_lo, hi)
    free_hi = jnp.clip(free_hi, free_lo, hi)
    lo = jnp.where(count > 0, lo, 0)
    hi = jnp.where(count > 0, hi, 0)
    return lo, jnp.clip(free_lo, lo, hi), jnp.clip(free_hi, lo, hi), hi


def split_range(lo: jax.Array, hi: jax.Array, split: jax.Array, num_splits: int) -> tuple[jax.Array, jax.Array]:
    """This split's even share ``[a, b)`` of the chunk range ``[lo, hi)``."""
    if num_splits == 1:
        return lo, hi
    per = (hi - lo + num_splits - 1) // num_splits
    a = jnp.minimum(lo + split * per, hi)
    return a, jnp.minimum(a + per, hi)


def combine_splits(out: jax.Array, m: jax.Array, row_sum: jax.Array) -> jax.Array:
    """Merges per-split normalized outputs ``[splits, ..., d]`` with their log2-max and sum."""
    m_all = jnp.max(m, axis=0)
    weight = jnp.exp2(m - m_all[None]) * row_sum
    total = jnp.sum(weight, axis=0)
    merged = jnp.sum(out * weight[..., None], axis=0)
    return merged / jnp.where(total > 0, total, 1.0)[..., None]


def mask_padding(out: jax.Array, num_real_tokens: jax.Array) -> jax.Array:
    """Zeros the rows of tokens past the batch's last real token (the kernels never write them)."""
    valid = jnp.arange(out.shape[0]) < num_real_tokens
    return jnp.where(valid[:, None, None], out, jnp.zeros((), out.dtype))
