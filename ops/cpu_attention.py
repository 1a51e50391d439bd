"""Paged attention for the CPU: work proportional to each sequence's own context.

Why not the reference: it gathers every sequence's whole block-table row and, for prefill,
builds ``[rows x window]`` scores per sequence, so on a CPU its cost grows with the batch's
widest context times its tokens (a 1,800-token prompt took 3x HF's time, decode at that
context ~110 ms/token). Here the amount of work follows the real contexts:

- **decode tokens** (sequences with exactly one new token): the step's (sequence, key chunk)
  pairs form one flat work list. A while loop takes ``pairs_per_iter`` pairs at a time,
  gathers only those chunks' blocks and folds each pair's partial softmax into its
  sequence's running max / sum / output (an online softmax whose steps are segment
  max/add). Each block is read once; the loop runs ceil(pairs / pairs_per_iter) times,
  whatever the block-table width or the batch's widest context.
- **prefill tokens** (sequences with two or more new tokens, chunks over a cached prefix
  included): query tiles of ``block_q`` tokens of one sequence; each tile runs a while loop
  over only the key chunks it can see (causal end, sliding-window start) with an online
  softmax (flash attention). Scores exist for one tile x one key chunk at a time.

Both loops have dynamic trip counts (XLA CPU runs while loops natively), so a wide block
table costs its int32 entries only: the runner can pass full-width tables and drop the
table-width bucket. Arithmetic is f32 whatever the cache dtype. Masked keys are zeroed in V
as well as in the probabilities, so stale or poisoned pool entries never reach the output.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ops.attention_backend import AttentionBackend, AttentionSpec
from ops.attention_metadata import AttentionMetadata, StepPlan
from ops.pallas_common import kv_chunk_bounds

MASKED = -1.0e30  # finite "minus infinity": exp(MASKED - m) is 0 and MASKED - MASKED is not NaN


@dataclasses.dataclass(frozen=True)
class CpuAttentionConfig:
    """Static tile sizes (in tokens, rounded to whole blocks where keys are concerned)."""

    # Decode: small gathers that stay in L2 won over 4,096-key ones (measured on 2 cores at
    # batch 1 x 1,800 context and batch 64 x 192: 0.9 vs 3.2 ms and 7 vs 13 ms per layer).
    decode_chunk_keys: int = 32  # keys per (sequence, chunk) decode work item
    decode_keys_per_iter: int = 512  # keys one decode loop iteration gathers over all its pairs
    block_q: int = 128  # prefill query rows per tile
    block_k: int = 256  # prefill keys per inner-loop chunk


@dataclasses.dataclass(frozen=True)
class CpuAttention(AttentionBackend[StepPlan]):
    """Decode work list plus flash-attention prefill tiles; see the module docstring for how."""

    config: CpuAttentionConfig = CpuAttentionConfig()

    def attend(
        self, q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: StepPlan, spec: AttentionSpec
    ) -> jax.Array:
        md = plan.md
        num_tokens = q.shape[0]
        kw: dict[str, Any] = dict(scale=spec.scale, sliding_window=spec.sliding_window, soft_cap=spec.soft_cap,
                                  config=self.config)
        starts = md.query_start_loc[:-1]
        q_lens = md.query_start_loc[1:] - starts
        token_seq = _token_sequence(md.query_start_loc, num_tokens)
        per_seq = _decode_attention(q, k_cache, v_cache, md, **kw)
        out = per_seq[token_seq]
        if md.max_query_len > 1:
            prefill = _prefill_attention(q, k_cache, v_cache, md, **kw)
            out = jnp.where((q_lens[token_seq] == 1)[:, None, None], out, prefill)
        valid = jnp.arange(num_tokens) < md.query_start_loc[-1]
        return jnp.where(valid[:, None, None], out, 0.0).astype(q.dtype)


def _token_sequence(query_start_loc: jax.Array, num_tokens: int) -> jax.Array:
    tokens = jnp.arange(num_tokens, dtype=jnp.int32)
    seq = jnp.searchsorted(query_start_loc[1:], tokens, side="right").astype(jnp.int32)
    return jnp.minimum(seq, query_start_loc.shape[0] - 2)


def _logits(q: jax.Array, k: jax.Array, spec: str, soft_cap: float | None) -> jax.Array:
    scores = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32)
    return scores if soft_cap is None else soft_cap * jnp.tanh(scores / soft_cap)


def _gather_keys(cache: jax.Array, blocks: jax.Array) -> jax.Array:
    """Blocks ``[..., n]`` of the pool as f32 keys ``[..., n * block_size, kv_heads, head_dim]``."""
    got = cache[blocks]
    return got.reshape(*blocks.shape[:-1], -1, *cache.shape[2:]).astype(jnp.float32)


def _table_entries(block_tables: jax.Array, seq: jax.Array, chunk: jax.Array, blocks_per_chunk: int) -> jax.Array:
    """Block ids of key chunk ``chunk`` of sequence ``seq`` (entries past the table are clamped)."""
    col = chunk[..., None] * blocks_per_chunk + jnp.arange(blocks_per_chunk, dtype=jnp.int32)
    col = jnp.minimum(col, block_tables.shape[1] - 1)
    return block_tables[seq[..., None], col]


def _decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, md: AttentionMetadata, *, scale: float,
                      sliding_window: int | None, soft_cap: float | None, config: CpuAttentionConfig) -> jax.Array:
    """Per-sequence outputs ``[S, heads, head_dim]`` for sequences with one new token (others: 0)."""
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    num_seqs = md.seq_lens.shape[0]
    group = num_heads // kv_heads
    blocks_per_chunk = max(1, min(config.decode_chunk_keys // block_size, md.block_tables.shape[1]))
    chunk_keys = blocks_per_chunk * block_size
    pairs = max(1, min(config.decode_keys_per_iter // chunk_keys,
                       num_seqs * -(-md.block_tables.shape[1] // blocks_per_chunk)))
    starts = md.query_start_loc[:-1]
    is_decode = md.query_start_loc[1:] - starts == 1
    seq_lens = md.seq_lens
    first = jnp.zeros_like(seq_lens)
    if sliding_window is not None:
        first = jnp.maximum(seq_lens - sliding_window, 0) // chunk_keys
    num_pairs = jnp.where(is_decode, -(-seq_lens // chunk_keys) - first, 0)
    pairs_end = jnp.cumsum(num_pairs)
    total = pairs_end[-1]
    queries = q[jnp.minimum(starts, num_tokens - 1)].astype(jnp.float32) * scale
    queries = queries.reshape(num_seqs, kv_heads, group, head_dim)

    def body(carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array]
             ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        it, run_max, run_sum, acc = carry
        item = it * pairs + jnp.arange(pairs, dtype=jnp.int32)
        live = item < total
        seq = jnp.minimum(jnp.searchsorted(pairs_end, item, side="right").astype(jnp.int32), num_seqs - 1)
        chunk = first[seq] + item - (pairs_end[seq] - num_pairs[seq])
        blocks = _table_entries(md.block_tables, seq, chunk, blocks_per_chunk)
        key_pos = chunk[:, None] * chunk_keys + jnp.arange(chunk_keys, dtype=jnp.int32)
        mask = (key_pos < seq_lens[seq][:, None]) & live[:, None]
        if sliding_window is not None:
            mask &= key_pos >= (seq_lens[seq] - sliding_window)[:, None]
        k = _gather_keys(k_cache, blocks)
        v = jnp.where(mask[:, :, None, None], _gather_keys(v_cache, blocks), 0.0)
        scores = _logits(queries[seq], k, "pkgd,pckd->pkgc", soft_cap)
        scores = jnp.where(mask[:, None, None, :], scores, MASKED)
        item_max = jnp.max(scores, axis=-1)
        weights = jnp.where(mask[:, None, None, :], jnp.exp(scores - item_max[..., None]), 0.0)
        item_out = jnp.einsum("pkgc,pckd->pkgd", weights, v)
        target = jnp.where(live, seq, num_seqs)  # dead items land in a spare row
        new_max = run_max.at[target].max(item_max)
        rescale = jnp.exp(run_max - new_max)
        factor = jnp.exp(item_max - new_max[target])
        run_sum = (run_sum * rescale).at[target].add(jnp.sum(weights, axis=-1) * factor)
        acc = (acc * rescale[..., None]).at[target].add(item_out * factor[..., None])
        return it + 1, new_max, run_sum, acc

    shape = (num_seqs + 1, kv_heads, group)
    init = (jnp.int32(0), jnp.full(shape, MASKED, jnp.float32), jnp.zeros(shape, jnp.float32),
            jnp.zeros((*shape, head_dim), jnp.float32))
    _, _, run_sum, acc = jax.lax.while_loop(lambda c: c[0] * pairs < total, body, init)
    out = acc[:num_seqs] / jnp.where(run_sum[:num_seqs] > 0, run_sum[:num_seqs], 1.0)[..., None]
    return out.reshape(num_seqs, num_heads, head_dim)


def _prefill_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, md: AttentionMetadata, *, scale: float,
                       sliding_window: int | None, soft_cap: float | None, config: CpuAttentionConfig) -> jax.Array:
    """Outputs ``[T, heads, head_dim]`` for tokens of sequences with two or more new tokens."""
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    num_seqs = md.seq_lens.shape[0]
    group = num_heads // kv_heads
    block_q = max(1, min(config.block_q, md.max_query_len, num_tokens))
    blocks_per_chunk = max(1, min(config.block_k // block_size, md.block_tables.shape[1]))
    chunk_keys = blocks_per_chunk * block_size
    starts = md.query_start_loc[:-1]
    q_lens = md.query_start_loc[1:] - starts
    tiles_per_seq = jnp.where(q_lens >= 2, -(-q_lens // block_q), 0)
    tiles_end = jnp.cumsum(tiles_per_seq)
    rows = jnp.arange(block_q, dtype=jnp.int32)
    q_padded = jnp.concatenate([q, jnp.zeros((block_q, num_heads, head_dim), q.dtype)])
    out0 = jnp.zeros((num_tokens + block_q, num_heads, head_dim), jnp.float32)

    def tile_body(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        tile, out = carry
        seq = jnp.minimum(jnp.searchsorted(tiles_end, tile, side="right").astype(jnp.int32), num_seqs - 1)
        q_off = (tile - (tiles_end[seq] - tiles_per_seq[seq])) * block_q
        count = jnp.minimum(q_lens[seq] - q_off, block_q)
        token = starts[seq] + q_off
        first_pos = md.seq_lens[seq] - q_lens[seq] + q_off
        # Rows are (group, query) pairs of one kv head: [kv_heads, group * block_q, head_dim].
        qt = jax.lax.dynamic_slice_in_dim(q_padded, token, block_q).astype(jnp.float32) * scale
        qt = jnp.transpose(qt.reshape(block_q, kv_heads, group, head_dim), (1, 2, 0, 3))
        qt = qt.reshape(kv_heads, group * block_q, head_dim)
        tile_step = functools.partial(_prefill_chunk, qt, k_cache, v_cache, md.block_tables[seq],
                                      row_pos=jnp.tile(first_pos + rows, group), last_pos=first_pos + count - 1,
                                      blocks_per_chunk=blocks_per_chunk, sliding_window=sliding_window,
                                      soft_cap=soft_cap)
        lo, free_lo, free_hi, hi = kv_chunk_bounds(first_pos, count, chunk_keys, sliding_window)
        shape = (kv_heads, group * block_q)
        state = (jnp.full(shape, MASKED, jnp.float32), jnp.zeros(shape, jnp.float32),
                 jnp.zeros((*shape, head_dim), jnp.float32))
        # Chunks every row sees whole need no mask; only the window's start and the diagonal do.
        for a, b, masked in ((lo, free_lo, True), (free_lo, free_hi, False), (free_hi, hi, True)):
            state = _chunk_loop(functools.partial(tile_step, masked=masked), a, b, state)
        _, run_sum, acc = state
        result = acc / jnp.where(run_sum > 0, run_sum, 1.0)[..., None]
        result = result.reshape(kv_heads, group, block_q, head_dim)
        result = jnp.transpose(result, (2, 0, 1, 3)).reshape(block_q, num_heads, head_dim)
        kept = jax.lax.dynamic_slice_in_dim(out, token, block_q)
        result = jnp.where((rows < count)[:, None, None], result, kept)
        return tile + 1, jax.lax.dynamic_update_slice_in_dim(out, result, token, 0)

    _, out = jax.lax.while_loop(lambda c: c[0] < tiles_end[-1], tile_body, (jnp.int32(0), out0))
    return out[:num_tokens]


def _chunk_loop(step: Callable[[jax.Array, Any], Any], lo: jax.Array, hi: jax.Array, state: tuple) -> tuple:
    """Runs ``state = step(chunk, state)`` for chunk in [lo, hi)."""
    def body(carry: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
        return carry[0] + 1, step(carry[0], carry[1])

    return jax.lax.while_loop(lambda c: c[0] < hi, body, (lo, state))[1]


def _prefill_chunk(qt: jax.Array, k_cache: jax.Array, v_cache: jax.Array, table_row: jax.Array, chunk: jax.Array,
                   state: tuple[jax.Array, jax.Array, jax.Array], *, row_pos: jax.Array, last_pos: jax.Array,
                   blocks_per_chunk: int, sliding_window: int | None, soft_cap: float | None,
                   masked: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One online-softmax step of a query tile over one key chunk (flash attention).

    Unmasked chunks lie wholly before every row's position and inside every row's window.
    Rows past the tile's tokens compute garbage that the caller discards; masked chunks zero
    V past the tile's last position so that garbage (or poison) never reaches real rows.
    """
    run_max, run_sum, acc = state
    blocks = _table_entries(table_row[None], jnp.zeros((1,), jnp.int32), chunk[None], blocks_per_chunk)[0]
    k = _gather_keys(k_cache, blocks)  # [chunk_keys, kv_heads, head_dim]
    v = _gather_keys(v_cache, blocks)
    scores = _logits(qt, k, "kmd,ckd->kmc", soft_cap)
    if masked:
        key_pos = chunk * k.shape[0] + jnp.arange(k.shape[0], dtype=jnp.int32)
        mask = key_pos[None, :] <= row_pos[:, None]
        if sliding_window is not None:
            mask &= key_pos[None, :] > (row_pos - sliding_window)[:, None]
        v = jnp.where((key_pos <= last_pos)[:, None, None], v, 0.0)
        scores = jnp.where(mask, scores, MASKED)
    new_max = jnp.maximum(run_max, jnp.max(scores, axis=-1))
    weights = jnp.exp(scores - new_max[..., None])
    if masked:
        weights = jnp.where(mask, weights, 0.0)
    rescale = jnp.exp(run_max - new_max)
    run_sum = run_sum * rescale + jnp.sum(weights, axis=-1)
    acc = acc * rescale[..., None] + jnp.einsum("kmc,ckd->kmd", weights, v)
    return new_max, run_sum, acc
