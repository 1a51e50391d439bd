"""Plain-XLA paged attention: correct on every platform, the kernels' test oracle.

Simple rather than fast: each sequence gathers its whole block-table row and, for prefill,
scores a ``max_query_len``-row window; ``ops.cpu_attention`` and the Pallas kernels do the
same work in proportion to the real contexts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ops.attention_backend import AttentionBackend, AttentionSpec
from ops.attention_metadata import StepPlan


def token_to_sequence(query_start_loc: jax.Array, num_tokens: int) -> tuple[jax.Array, jax.Array]:
    """For each packed token: its sequence index and its row within that sequence's queries."""
    tokens = jnp.arange(num_tokens, dtype=jnp.int32)
    seq = jnp.searchsorted(query_start_loc[1:], tokens, side="right").astype(jnp.int32)
    seq = jnp.minimum(seq, query_start_loc.shape[0] - 2)
    return seq, tokens - query_start_loc[seq]


@dataclasses.dataclass(frozen=True)
class ReferenceAttention(AttentionBackend[StepPlan]):
    """Every sequence against its whole block-table row, in plain XLA; no options."""

    def attend(
        self, q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: StepPlan, spec: AttentionSpec
    ) -> jax.Array:
        md = plan.md
        scale, sliding_window, soft_cap = spec.scale, spec.sliding_window, spec.soft_cap
        num_tokens, num_heads, head_dim = q.shape
        _, block_size, num_kv_heads, _ = k_cache.shape
        num_seqs, blocks_per_seq = md.block_tables.shape
        group = num_heads // num_kv_heads
        window = md.max_query_len
        context = blocks_per_seq * block_size
        q_padded = jnp.concatenate([q, jnp.zeros((window, num_heads, head_dim), q.dtype)])

        def attend_rows(s: jax.Array, rows: int) -> jax.Array:
            """Sequence ``s``'s first ``rows`` query rows against its context, padded to ``window``."""
            start = md.query_start_loc[s]
            q_len = md.query_start_loc[s + 1] - start
            seq_len = md.seq_lens[s]
            qs = jax.lax.dynamic_slice_in_dim(q_padded, start, rows).astype(jnp.float32)
            qs = qs.reshape(rows, num_kv_heads, group, head_dim)
            k = k_cache[md.block_tables[s]].reshape(context, num_kv_heads, head_dim).astype(jnp.float32)
            v = v_cache[md.block_tables[s]].reshape(context, num_kv_heads, head_dim).astype(jnp.float32)
            scores = jnp.einsum("qkgd,ckd->kgqc", qs, k) * scale
            if soft_cap is not None:
                scores = soft_cap * jnp.tanh(scores / soft_cap)
            q_pos = seq_len - q_len + jnp.arange(rows)
            c_pos = jnp.arange(context)
            mask = (c_pos[None, :] <= q_pos[:, None]) & (jnp.arange(rows)[:, None] < q_len)
            if sliding_window is not None:
                mask &= c_pos[None, :] > q_pos[:, None] - sliding_window
            scores = jnp.where(mask, scores, -jnp.inf)
            peak = jnp.max(scores, axis=-1, keepdims=True)
            weights = jnp.exp(scores - jnp.where(jnp.isfinite(peak), peak, 0.0))
            denom = jnp.sum(weights, axis=-1, keepdims=True)
            probs = weights / jnp.where(denom > 0, denom, 1.0)
            out = jnp.einsum("kgqc,ckd->qkgd", probs, v).reshape(rows, num_heads, head_dim)
            return jnp.pad(out, ((0, window - rows), (0, 0), (0, 0)))

        if window == 1:
            per_seq = jax.vmap(lambda s: attend_rows(s, 1))(jnp.arange(num_seqs))
        else:
            # One sequence at a time; decode and padding sequences (q_len <= 1) take a one-row
            # branch, so a mixed step does not pay a prefill-sized window for every decode.
            def attend_one_sequence(s: jax.Array) -> jax.Array:
                q_len = md.query_start_loc[s + 1] - md.query_start_loc[s]
                return jax.lax.cond(q_len <= 1, lambda: attend_rows(s, 1), lambda: attend_rows(s, window))

            per_seq = jax.lax.map(attend_one_sequence, jnp.arange(num_seqs))
        seq, row = token_to_sequence(md.query_start_loc, num_tokens)
        out = per_seq[seq, jnp.minimum(row, window - 1)]
        valid = jnp.arange(num_tokens) < md.query_start_loc[-1]
        return jnp.where(valid[:, None, None], out, 0.0).astype(q.dtype)
