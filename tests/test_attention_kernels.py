"""The Pallas attention kernels against the XLA reference, in interpret mode on the CPU.

Inputs are fresh random numbers for every run (the seed is in each failure message). Pool
blocks a step must not read hold NaN, padded tokens' queries are NaN, and interpret mode
fills kernel outputs with NaN before the kernel runs, so a wrong read or an unwritten
element shows up as NaN or as a mismatch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import mesh as mesh_lib

from ops import pallas_common as pc
from ops.attention import get_backend
from ops.attention_backend import write_kv
from ops.attention_metadata import AttentionMetadata
from ops.pallas_cases import Case, make_case, pool_copies, relative_error
from ops.pallas_gpu_attention import GpuKernelConfig, PallasGpuAttention
from ops.pallas_tpu_attention import PallasTpuAttention
from ops.reference_attention import ReferenceAttention

# A ragged step: context of 1, a whole prompt, a padded slot, decodes off and on block
# boundaries, a long decode, a prefill chunk over history, a chunk ending on a boundary.
Q_LENS = [1, 7, 0, 1, 20, 3, 1, 1]
SEQ_LENS = [1, 7, 0, 33, 70, 16, 32, 130]
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**31))


def check(case: Case, out: jax.Array, seed: int, dtype, **kw) -> None:
    k_clean, v_clean = case.clean()
    ref = ReferenceAttention().paged_attention(case.q, k_clean, v_clean, case.md, scale=kw["scale"],
                                               sliding_window=kw.get("sliding_window"),
                                               soft_cap=kw.get("soft_cap"))
    out32 = np.asarray(out.astype(jnp.float32))
    assert out.dtype == case.q.dtype and out.shape == case.q.shape
    assert not np.isnan(out32).any(), f"NaN in output (seed {seed})"
    real = int(case.md.query_start_loc[-1])
    assert (out32[real:] == 0).all(), f"padded tokens not zero (seed {seed})"
    err = relative_error(out32, ref.astype(jnp.float32))
    assert err < TOLERANCE[dtype], f"relative error {err:.2e} (seed {seed})"


GROUPS_DIMS_BLOCKS = [
    (1, 64, 16), (1, 128, 32), (4, 64, 32), (4, 128, 16), (8, 64, 16), (8, 128, 32),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("group,head_dim,block_size", GROUPS_DIMS_BLOCKS)
def test_gpu_kernel_matches_reference(group, head_dim, block_size, dtype):
    seed = fresh_seed()
    kv_heads = 2 if group < 8 else 1
    case = make_case(seed, Q_LENS, SEQ_LENS, num_heads=group * kv_heads, num_kv_heads=kv_heads,
                     head_dim=head_dim, block_size=block_size, dtype=dtype, pad_tokens=3)
    kw = dict(scale=head_dim**-0.5)
    out = PallasGpuAttention().paged_attention(case.q, case.k_cache, case.v_cache, case.md, **kw)
    check(case, out, seed, dtype, **kw)


@pytest.mark.parametrize(
    "config",
    [
        GpuKernelConfig(rows=16, block_k=16),  # many chunks: exercises the unmasked loop
        GpuKernelConfig(rows=32, block_k=32, kv_splits=3),  # flash-decoding split + merge
    ],
    ids=["small-tiles", "kv-splits"],
)
@pytest.mark.parametrize("window,cap", [(None, None), (24, 5.0)], ids=["plain", "window-cap"])
def test_gpu_kernel_configs(config, window, cap):
    seed = fresh_seed()
    case = make_case(seed, Q_LENS, SEQ_LENS, num_heads=8, num_kv_heads=2, head_dim=64,
                     block_size=16, pad_tokens=2)
    kw = dict(scale=0.125, sliding_window=window, soft_cap=cap)
    out = PallasGpuAttention(config).paged_attention(case.q, case.k_cache, case.v_cache, case.md, **kw)
    check(case, out, seed, jnp.float32, **kw)


def test_gpu_kernel_pure_decode_with_splits():
    seed = fresh_seed()
    q_lens = [1, 1, 0, 1, 1]
    case = make_case(seed, q_lens, [1, 95, 0, 32, 200], num_heads=8, num_kv_heads=2,
                     head_dim=128, block_size=16, dtype=jnp.bfloat16, pad_tokens=3)
    kw = dict(scale=0.1, sliding_window=70)
    config = GpuKernelConfig(rows=16, block_k=32, target_programs=64)  # splits chosen: 4
    out = PallasGpuAttention(config).paged_attention(case.q, case.k_cache, case.v_cache, case.md, **kw)
    check(case, out, seed, jnp.bfloat16, **kw)


@pytest.mark.parametrize(
    "group,head_dim,block_size,dtype",
    [(1, 128, 16, jnp.float32), (4, 64, 32, jnp.bfloat16), (8, 128, 16, jnp.bfloat16)],
)
def test_tpu_kernel_matches_reference(group, head_dim, block_size, dtype):
    seed = fresh_seed()
    kv_heads = 2 if group < 8 else 1
    case = make_case(seed, Q_LENS, SEQ_LENS, num_heads=group * kv_heads, num_kv_heads=kv_heads,
                     head_dim=head_dim, block_size=block_size, dtype=dtype, pad_tokens=3)
    kw = dict(scale=head_dim**-0.5)
    out = PallasTpuAttention().paged_attention(case.q, case.k_cache, case.v_cache, case.md, **kw)
    check(case, out, seed, dtype, **kw)


def test_tpu_kernel_window_cap_and_no_dma_races():
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret
    from jax.experimental.pallas import tpu as pltpu

    seed = fresh_seed()
    case = make_case(seed, Q_LENS, SEQ_LENS, num_heads=4, num_kv_heads=2, head_dim=128,
                     block_size=16, pad_tokens=1)
    kw = dict(scale=0.09, sliding_window=20, soft_cap=4.0)
    params = pltpu.InterpretParams(detect_races=True)
    out = PallasTpuAttention(params).paged_attention(case.q, case.k_cache, case.v_cache, case.md, **kw)
    check(case, out, seed, jnp.float32, **kw)
    assert tpu_interpret.races is not None and not tpu_interpret.races.races_found


def test_tile_table_covers_every_token_once():
    rng = np.random.default_rng(fresh_seed())
    q_lens = rng.integers(0, 40, size=9).tolist()
    starts = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    num_tokens = int(starts[-1]) + 5
    md = AttentionMetadata(
        slot_mapping=jnp.zeros(num_tokens, jnp.int32),
        block_tables=jnp.zeros((9, 4), jnp.int32),
        seq_lens=jnp.asarray(np.asarray(q_lens) + 3, jnp.int32),
        query_start_loc=jnp.asarray(starts),
        max_query_len=max(q_lens),
    )
    for block_q in (1, 4, 16):
        table = np.asarray(pc.build_tile_table(md, num_tokens, block_q))
        assert table.shape[0] == pc.max_query_tiles(num_tokens, 9, block_q)
        covered = np.zeros(num_tokens, int)
        for seq, token, count, pos in table:
            covered[token : token + count] += 1
            if count:
                assert starts[seq] <= token and token + count <= starts[seq + 1]
                assert pos == q_lens[seq] + 3 - (starts[seq + 1] - token)
        assert (covered[: starts[-1]] == 1).all() and (covered[starts[-1] :] == 0).all()


def _cross_lower(fn, platform: str, device_kind: str, *shapes):
    device = mesh_lib.AbstractDevice(device_kind=device_kind, num_cores=1, platform=platform)
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*shapes).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("max_query_len,window,cap", [(1, None, None), (64, 128, 30.0)])
@pytest.mark.parametrize("target", ["cuda", "tpu"])
def test_kernels_lower_for_their_hardware(target, max_query_len, window, cap):
    """The Pallas lowering (to Triton IR / Mosaic) runs on the CPU; only the device compile doesn't."""
    tokens, seqs, width = 256, 8, 64

    def fn(q, k, v, slots, tables, lens, starts):
        md = AttentionMetadata(slots, tables, lens, starts, max_query_len=max_query_len)
        backend = PallasGpuAttention(interpret=False) if target == "cuda" else PallasTpuAttention(interpret=False)
        return backend.paged_attention(q, k, v, md, scale=0.1, sliding_window=window, soft_cap=cap)

    pool = jax.ShapeDtypeStruct((seqs * width, 16, 8, 128), jnp.bfloat16)
    text = _cross_lower(
        fn, target, "NVIDIA H100 80GB HBM3" if target == "cuda" else "TPU v5 lite",
        jax.ShapeDtypeStruct((tokens, 32, 128), jnp.bfloat16), pool, pool,
        jax.ShapeDtypeStruct((tokens,), jnp.int32), jax.ShapeDtypeStruct((seqs, width), jnp.int32),
        jax.ShapeDtypeStruct((seqs,), jnp.int32), jax.ShapeDtypeStruct((seqs + 1,), jnp.int32),
    )
    assert ("xla.gpu.triton" if target == "cuda" else "tpu_custom_call") in text


@pytest.mark.parametrize("backend", ["reference", "pallas_tpu"])
def test_compiled_step_updates_pool_in_place(backend):
    """write_kv + attention under jit with donated pools must not copy the pool.

    The GPU kernel's interpret mode copies its inputs by construction, so its production
    program is checked on the GPU by benchmarks/kernels.py instead.
    """
    case = make_case(fresh_seed(), [1, 7, 0, 1], [1, 7, 0, 33], num_heads=8, num_kv_heads=2,
                     head_dim=64, block_size=16, spare_blocks=60, poison=False)

    def step(k_cache, v_cache, q, k, v, md):
        k_cache, v_cache = write_kv(k_cache, v_cache, k, v, md.slot_mapping)
        return get_backend(backend).paged_attention(q, k_cache, v_cache, md, scale=0.125), k_cache, v_cache

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        case.k_cache, case.v_cache, case.q, case.k_new, case.v_new, case.md
    ).compile()
    assert pool_copies(compiled.as_text(), case.k_cache.size) == []
    memory = compiled.memory_analysis()
    assert memory.temp_size_in_bytes < case.k_cache.nbytes
    assert memory.alias_size_in_bytes >= 2 * case.k_cache.nbytes
