"""The CPU attention path against the XLA reference on poisoned ragged steps.

Pool blocks a step must not read hold NaN (see ops/pallas_cases.py) and padded tokens'
queries are NaN, so a wrong read shows up as NaN or a mismatch. Seeds are fresh every run
and printed in each failure message.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops.attention import default_backend, get_backend
from ops.cpu_attention import CpuAttention, CpuAttentionConfig
from ops.pallas_cases import make_case, relative_error
from ops.reference_attention import ReferenceAttention

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
SMALL_TILES = CpuAttentionConfig(decode_chunk_keys=16, decode_keys_per_iter=48, block_q=4, block_k=32)
STEPS = {
    # a decode-only step: contexts on and off block boundaries, a padded slot, a long one
    "decode": ([1, 1, 0, 1, 1, 1], [1, 95, 0, 32, 200, 17]),
    # prefill chunks over cached blocks (history 40, 64, 3) and a whole prompt
    "prefill": ([9, 20, 5, 33], [49, 84, 8, 33]),
    # decodes and prefills in one step, as the scheduler mixes them
    "mixed": ([1, 7, 0, 1, 20, 3, 1, 1], [1, 7, 0, 33, 70, 16, 32, 130]),
}


def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**31))


DEFAULT_CONFIG = CpuAttentionConfig()


def run_and_check(step: str, seed: int, *, group: int, dtype=jnp.float32, config=DEFAULT_CONFIG,
                  extra_table_width: int = 1, **kw) -> None:
    q_lens, seq_lens = STEPS[step]
    kv_heads = 2
    case = make_case(seed, q_lens, seq_lens, num_heads=group * kv_heads, num_kv_heads=kv_heads, head_dim=64,
                     block_size=16, dtype=dtype, pad_tokens=3, extra_table_width=extra_table_width)
    k_clean, v_clean = case.clean()
    ref = ReferenceAttention().paged_attention(case.q, k_clean, v_clean, case.md, **kw)
    attend = jax.jit(lambda q, k, v, md: CpuAttention(config).paged_attention(q, k, v, md, **kw))
    out = attend(case.q, case.k_cache, case.v_cache, case.md)
    out32 = np.asarray(out.astype(jnp.float32))
    assert out.dtype == case.q.dtype and out.shape == case.q.shape
    assert not np.isnan(out32).any(), f"NaN in output (seed {seed})"
    real = sum(q_lens)
    assert (out32[real:] == 0).all(), f"padded tokens not zero (seed {seed})"
    err = relative_error(out32, ref.astype(jnp.float32))
    assert err < TOLERANCE[dtype], f"relative error {err:.2e} (seed {seed})"


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("group,config", [(4, CpuAttentionConfig()), (1, SMALL_TILES)],
                         ids=["gqa-default-tiles", "mha-small-tiles"])
def test_cpu_path_matches_reference(step, group, config):
    run_and_check(step, fresh_seed(), group=group, config=config, scale=64**-0.5)


@pytest.mark.parametrize("step", ["decode", "mixed"])
def test_cpu_path_sliding_window_and_soft_cap(step):
    run_and_check(step, fresh_seed(), group=3, config=SMALL_TILES, scale=0.1, sliding_window=24, soft_cap=5.0)


def test_cpu_path_bf16_and_wide_table():
    # A full-width table (the runner's max_blocks_per_seq) costs no extra reads: entries past
    # a sequence's blocks point at poisoned blocks.
    run_and_check("mixed", fresh_seed(), group=2, dtype=jnp.bfloat16, extra_table_width=40, scale=0.125)


def test_cpu_is_the_cpu_default_and_reference_stays_selectable(monkeypatch):
    monkeypatch.delenv("TESSERA_ATTENTION_BACKEND", raising=False)
    assert jax.default_backend() == "cpu" and default_backend() == "cpu"
    seed = fresh_seed()
    q_lens, seq_lens = STEPS["mixed"]
    case = make_case(seed, q_lens, seq_lens, num_heads=4, num_kv_heads=2, head_dim=64, block_size=16,
                     poison=False)
    outs = [get_backend(b).paged_attention(case.q, case.k_cache, case.v_cache, case.md, scale=0.125)
            for b in ("cpu", "reference")]
    assert relative_error(outs[0], outs[1]) < 1e-5, f"seed {seed}"
