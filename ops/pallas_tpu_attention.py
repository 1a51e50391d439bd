"""Ragged paged attention for TPUs in Pallas (Mosaic TPU), over the engine's K and V pools.

jax ships ``jax.experimental.pallas.ops.tpu.ragged_paged_attention``, but it wants K and V
interleaved in one ``[pages, page_size, 2 * kv_heads, head_dim]`` pool (ours are two pools,
chosen for the GPU kernel and for sharding kv heads over tp), so using it would mean copying
the whole cache every step; and under jax 0.11.2 it does not run in CPU interpret mode (its
ref reshapes fail there: "'ReshapeTransform' object has no attribute 'indices'"), so it could
not be tested here. This kernel is our own and runs in TPU interpret mode on the CPU.

Grid: one program per query tile (``block_q`` tokens of one sequence). The wrapper gathers the
tile's queries into ``[kv_heads, rows, head_dim]`` (rows = tokens x GQA group). The program
walks the sequence ``pages_per_chunk`` pages at a time, double-buffering whole pages (all kv
heads, one contiguous DMA each) from HBM into VMEM, and keeps an f32 online softmax per kv head.

Not measured on a TPU (none is available to this project): the block sizes are guesses, and
flash-decoding splits and megacore partitioning of the grid are left for when one is.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ops import pallas_common as pc
from ops.attention_backend import AttentionBackend, AttentionShape, AttentionSpec
from ops.attention_metadata import AttentionMetadata, StepPlan

TARGET_ROWS = 128  # MXU rows of a prefill tile
PAGES_PER_CHUNK = 8


def _kernel(
    tiles_ref: Any, bt_ref: Any, q_ref: Any, k_hbm: Any, v_hbm: Any, o_ref: Any, k_buf: Any, v_buf: Any, sems: Any,
    group: int, pages: int, block_size: int, bt_width: int, scale: float,
    soft_cap: float | None, sliding_window: int | None,
) -> None:
    """One query tile of one sequence; the refs are Pallas memory references (SMEM tables, VMEM
    blocks and buffers, HBM pools, DMA semaphores)."""
    tile = pl.program_id(0)
    seq = tiles_ref[tile * pc.TILE_FIELDS + pc.TILE_SEQ]
    count = tiles_ref[tile * pc.TILE_FIELDS + pc.TILE_COUNT]
    first_pos = tiles_ref[tile * pc.TILE_FIELDS + pc.TILE_POS]
    kv_end = first_pos + count
    chunk_keys = pages * block_size
    num_kv_heads, rows, head_dim = q_ref.shape

    def copies(chunk: jax.Array | int, slot: jax.Array | int) -> list[Any]:
        out = []
        for i in range(pages):
            # Entries past the sequence's last block are unspecified: keep the DMA in bounds.
            blk = jnp.clip(bt_ref[seq * bt_width + chunk * pages + i], 0, k_hbm.shape[0] - 1)
            for hbm, buf, kind in ((k_hbm, k_buf, 0), (v_hbm, v_buf, 1)):
                out.append(pltpu.make_async_copy(hbm.at[blk], buf.at[slot, i], sems.at[kind, slot]))
        return out

    lo, _, _, hi = pc.kv_chunk_bounds(first_pos, count, chunk_keys, sliding_window)
    q = q_ref[...]
    tok = jax.lax.broadcasted_iota(jnp.int32, (rows, chunk_keys), 0) // group
    q_pos = first_pos + tok

    @pl.when(lo < hi)
    def _start_first_chunk() -> None:
        for c in copies(lo, 0):
            c.start()

    def step(chunk: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        acc, m, row_sum = carry
        slot = (chunk - lo) % 2
        for c in copies(chunk, slot):
            c.wait()

        @pl.when(chunk + 1 < hi)
        def _prefetch_next_chunk() -> None:
            for c in copies(chunk + 1, 1 - slot):
                c.start()

        k = k_buf[slot].reshape(chunk_keys, num_kv_heads, head_dim)
        v = v_buf[slot].reshape(chunk_keys, num_kv_heads, head_dim)
        kpos = chunk * chunk_keys + jax.lax.broadcasted_iota(jnp.int32, (rows, chunk_keys), 1)
        seen = pc.visible_keys(kpos, q_pos, kv_end, sliding_window)
        # Slots past the context may hold anything (NaN included): zero their V so that
        # 0-probability x garbage cannot poison the sum.
        key_ok = (kpos[:1, :] < kv_end).reshape(chunk_keys, 1, 1)
        v = jnp.where(key_ok, v, jnp.zeros((), v.dtype))
        s = pc.log2_scores(jnp.einsum("hrd,nhd->hrn", q, k, preferred_element_type=jnp.float32), scale, soft_cap)
        s = jnp.where(seen[None], s, pc.MASKED)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new)
        row_sum = row_sum * alpha + jnp.sum(p, axis=-1, keepdims=True)
        pv = jnp.einsum("hrn,nhd->hrd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return acc * alpha + pv, m_new, row_sum

    carry = (
        jnp.zeros((num_kv_heads, rows, head_dim), jnp.float32),
        jnp.full((num_kv_heads, rows, 1), pc.MASKED, jnp.float32),
        jnp.zeros((num_kv_heads, rows, 1), jnp.float32),
    )
    acc, _, row_sum = jax.lax.fori_loop(lo, hi, step, carry)
    o_ref[...] = (acc / jnp.where(row_sum > 0, row_sum, 1.0)).astype(o_ref.dtype)


@struct.dataclass
class TpuStepPlan(StepPlan):
    """The kernel's per-step tables, built once and shared by every layer."""

    tiles: jax.Array  # [num_tiles, TILE_FIELDS], see ops.pallas_common
    block_tables: jax.Array  # each row padded to whole chunks of `pages` pages
    block_q: int = struct.field(pytree_node=False)  # tokens per query tile
    pages: int = struct.field(pytree_node=False)  # pages per key chunk


@dataclasses.dataclass(frozen=True)
class PallasTpuAttention(AttentionBackend[TpuStepPlan]):
    """The kernel, with the step's tables built in ``prepare``; off a TPU it runs in TPU interpret mode."""

    interpret: bool | pltpu.InterpretParams | None = None  # None: interpret when not on a TPU

    def prepare(self, md: AttentionMetadata, shape: AttentionShape) -> TpuStepPlan:
        width = md.block_tables.shape[1]
        block_q = pc.pick_block_q(md.max_query_len, shape.group, TARGET_ROWS)
        pages = min(PAGES_PER_CHUNK, width)
        bt_width = -(-width // pages) * pages
        block_tables = jnp.pad(md.block_tables, ((0, 0), (0, bt_width - width)))
        return TpuStepPlan(md, pc.build_tile_table(md, shape.num_tokens, block_q), block_tables, block_q, pages)

    def attend(
        self, q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: TpuStepPlan, spec: AttentionSpec
    ) -> jax.Array:
        interpret = self.interpret
        if interpret is None:
            interpret = pltpu.InterpretParams() if jax.default_backend() != "tpu" else False
        return _run_kernel(q, k_cache, v_cache, plan, spec, interpret)


def _run_kernel(
    q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: TpuStepPlan, spec: AttentionSpec,
    interpret: bool | pltpu.InterpretParams,
) -> jax.Array:
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    block_q, pages, tiles = plan.block_q, plan.pages, plan.tiles
    sublanes = 8 * (4 // jnp.dtype(q.dtype).itemsize)
    rows = -(-block_q * group // sublanes) * sublanes
    num_tiles = tiles.shape[0]
    bt_width = plan.block_tables.shape[1]

    # Gather each tile's queries as [kv_heads, rows, head_dim]; rows past the tile read (and
    # write back to) a spare row past the end.
    r = jnp.arange(rows)
    tok = r // group
    seg_tok = tiles[:, pc.TILE_TOKEN, None] + tok[None, :]
    row_ok = (tok[None, :] < tiles[:, pc.TILE_COUNT, None]) & (r[None, :] < block_q * group)
    heads = jnp.arange(num_kv_heads)[None, :, None] * group + (r % group)[None, None, :]
    flat = seg_tok[:, None, :] * num_heads + heads
    dump = num_tokens * num_heads
    flat = jnp.where(row_ok[:, None, :], flat, dump)
    q_rows = jnp.concatenate([q.reshape(dump, head_dim), jnp.zeros((1, head_dim), q.dtype)])

    tile_spec = pl.BlockSpec((None, num_kv_heads, rows, head_dim), lambda t, *_: (t, 0, 0, 0))
    page_buf = pltpu.VMEM((2, pages, block_size, num_kv_heads, head_dim), k_cache.dtype)
    kernel = functools.partial(
        _kernel, group=group, pages=pages, block_size=block_size, bt_width=bt_width,
        scale=spec.scale, soft_cap=spec.soft_cap, sliding_window=spec.sliding_window,
    )
    out_tiles = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(num_tiles,),
            in_specs=[tile_spec, pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=tile_spec,
            scratch_shapes=[page_buf, page_buf, pltpu.SemaphoreType.DMA((2, 2))],
        ),
        out_shape=jax.ShapeDtypeStruct((num_tiles, num_kv_heads, rows, head_dim), q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",)),
        interpret=interpret,
        name="ragged_paged_attention_tpu",
    )(tiles.reshape(-1), plan.block_tables.reshape(-1), q_rows[flat], k_cache, v_cache)
    out = jnp.zeros((dump + 1, head_dim), q.dtype).at[flat].set(out_tiles)
    return out[:dump].reshape(num_tokens, num_heads, head_dim)
