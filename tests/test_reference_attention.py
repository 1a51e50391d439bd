"""The XLA reference attention (the kernels' oracle) against a naive per-token numpy loop."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ops.pallas_cases import make_case, relative_error
from ops.reference_attention import ReferenceAttention


def naive_attention(q, k_cache, v_cache, md, *, scale, sliding_window=None, soft_cap=None):
    """Token by token, head by head, key by key: the definition, in float64."""
    q = np.asarray(q, np.float64)
    k_cache = np.asarray(k_cache, np.float64)
    v_cache = np.asarray(v_cache, np.float64)
    tables = np.asarray(md.block_tables)
    seq_lens = np.asarray(md.seq_lens)
    starts = np.asarray(md.query_start_loc)
    num_heads = q.shape[1]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = np.zeros_like(q)
    for s in range(len(seq_lens)):
        q_len = starts[s + 1] - starts[s]
        for i in range(q_len):
            token = starts[s] + i
            pos = seq_lens[s] - q_len + i
            first = 0 if sliding_window is None else max(0, pos - sliding_window + 1)
            keys = range(first, pos + 1)
            slots = [(tables[s, j // block_size], j % block_size) for j in keys]
            for h in range(num_heads):
                kv = h // group
                logits = []
                for blk, off in slots:
                    x = float(q[token, h] @ k_cache[blk, off, kv]) * scale
                    logits.append(soft_cap * math.tanh(x / soft_cap) if soft_cap else x)
                weights = np.exp(np.asarray(logits) - max(logits))
                weights /= weights.sum()
                out[token, h] = sum(w * v_cache[blk, off, kv] for w, (blk, off) in zip(weights, slots, strict=True))
    return out


@pytest.mark.parametrize(
    "group,window,cap,dtype",
    [(1, None, None, jnp.float32), (4, 6, None, jnp.float32), (2, None, 3.0, jnp.float32),
     (4, 9, 2.5, jnp.bfloat16)],
)
def test_reference_matches_naive_loop(group, window, cap, dtype):
    seed = int(np.random.SeedSequence().entropy % (2**31))
    case = make_case(seed, [1, 5, 0, 3, 1, 2], [1, 5, 0, 11, 17, 8], num_heads=2 * group,
                     num_kv_heads=2, head_dim=16, block_size=4, dtype=dtype, pad_tokens=2,
                     poison=False)
    kw = dict(scale=0.25, sliding_window=window, soft_cap=cap)
    got = ReferenceAttention().paged_attention(case.q, case.k_cache, case.v_cache, case.md, **kw)
    want = naive_attention(case.q, case.k_cache, case.v_cache, case.md, **kw)
    real = int(case.md.query_start_loc[-1])
    got32 = np.asarray(got.astype(jnp.float32))
    assert (got32[real:] == 0).all()
    tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
    assert relative_error(got32, want) < tolerance, f"seed {seed}"
