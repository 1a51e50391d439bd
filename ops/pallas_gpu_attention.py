"""Ragged paged attention for NVIDIA GPUs in Pallas (Triton lowering).

Grid: (query tile, kv head, kv split). A program owns up to ``block_q`` new tokens of one
sequence times the ``group`` query heads that share its kv head: those ``rows`` form the M side
of the MMAs, so each K/V element is read once per tile rather than once per query head. The
program walks its sequence's keys ``block_k`` at a time, reading block ids from the block table
and gathering K/V rows straight from the pool (no copy of the pages), with an f32 online
softmax in log2 units. Chunks that every row fully sees run without any masking; only the
chunks on the causal diagonal, at the end of the context or at the window's start are masked.
When the grid is too small to fill the GPU (decode at small batch) each tile's keys are split
over ``kv_splits`` programs and the partial results merged by a second, tiny XLA pass.

Why the Triton lowering and not Mosaic GPU: docs/kernels.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ops import pallas_common as pc
from ops.attention_backend import AttentionBackend, AttentionShape, AttentionSpec
from ops.attention_metadata import AttentionMetadata, StepPlan
from ops.reference_attention import ReferenceAttention

# The Triton lowering runs f32 dots as TF32 unless asked for full precision (no effect on bf16).
EXACT = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class GpuKernelConfig:
    """Tiling and launch parameters; ``default_config`` picks them from the step's shape."""

    rows: int = 64  # target MMA rows (tokens x GQA group) of a prefill tile
    block_k: int = 64  # keys per inner-loop step
    small_block_k: int = 128  # keys per step for single-token tiles (decodes in a mixed launch)
    num_warps: int = 4
    num_stages: int = 3
    kv_splits: int | None = None  # None: choose from the grid size
    target_programs: int = 264  # two programs per SM of an H100


DECODE_CONFIG = GpuKernelConfig(rows=16, block_k=128, num_warps=4, num_stages=3)
# Measured on an H100 (benchmarks/RESULTS.md): decode is bandwidth-bound and insensitive to the
# launch shape; prefill gains most from tall tiles, which cut the K/V gathers per FLOP.
PREFILL_CONFIG = GpuKernelConfig(rows=256, block_k=64, num_warps=8, num_stages=2)


def default_config(max_query_len: int) -> GpuKernelConfig:
    return DECODE_CONFIG if max_query_len <= 1 else PREFILL_CONFIG


def _fit_default(cfg: GpuKernelConfig, query_rows: int) -> GpuKernelConfig:
    """Shrinks tall prefill tiles until the step's query rows fill ``target_programs`` programs
    (a 512-token chunk in 256-row tiles would leave most SMs idle), with the warps to match."""
    rows = cfg.rows
    while rows > 64 and query_rows // rows < cfg.target_programs:
        rows //= 2
    if rows == cfg.rows:
        return cfg
    return dataclasses.replace(cfg, rows=rows, num_warps=min(cfg.num_warps, 4))


def supported(shape: AttentionShape) -> bool:
    """Shapes the kernel handles; anything else goes to the reference."""
    pow2 = lambda n: n & (n - 1) == 0  # noqa: E731
    return (shape.head_dim >= 16 and pow2(shape.head_dim) and pow2(shape.block_size)
            and shape.num_heads % shape.num_kv_heads == 0)


def _kernel(
    tiles_ref: Any, bt_ref: Any, q_ref: Any, k_ref: Any, v_ref: Any, o_ref: Any, *stat_refs: Any,
    rows: int, small_rows: int, group: int, num_heads: int, block_q: int, block_k: int,
    small_block_k: int, block_size: int, bt_width: int, num_splits: int, rows_total: int,
    head_dim: int, scale: float,
    soft_cap: float | None, sliding_window: int | None,
) -> None:
    """One query tile for one kv head (and one key split); the refs are Pallas memory references."""
    # Tiles run last-first: a sequence's later tiles see more keys, so under causal masking
    # the longest programs start first and the short ones fill the tail.
    tile = pl.num_programs(0) - 1 - pl.program_id(0)
    head, split = pl.program_id(1), pl.program_id(2)
    count = tiles_ref[tile, pc.TILE_COUNT]

    def attend(num_rows: int, block_k: int) -> None:
        seq = tiles_ref[tile, pc.TILE_SEQ]
        token0 = tiles_ref[tile, pc.TILE_TOKEN]
        first_pos = tiles_ref[tile, pc.TILE_POS]
        kv_end = first_pos + count
        r = jax.lax.broadcasted_iota(jnp.int32, (num_rows,), 0)
        col = jax.lax.broadcasted_iota(jnp.int32, (1, head_dim), 1)
        tok = r // group
        row_ok = (tok < count) & (r < block_q * group)
        # Rows outside the tile point past the end: masked on the GPU, dropped in interpret mode.
        qrow = jnp.where(row_ok, (token0 + tok) * num_heads + head * group + r % group, rows_total)
        q = plgpu.load(q_ref.at[qrow[:, None], col], mask=row_ok[:, None], other=0)
        q_pos = first_pos + tok

        def step(c: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array],
                 masked: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
            acc, m, row_sum = carry
            kpos = c * block_k + jax.lax.broadcasted_iota(jnp.int32, (block_k,), 0)
            blk = bt_ref[seq * bt_width + kpos // block_size]
            slot = blk * block_size + kpos % block_size
            if masked:
                key_ok = (kpos < kv_end)[:, None]
                k = plgpu.load(k_ref.at[slot[:, None], col], mask=key_ok, other=0)
                v = plgpu.load(v_ref.at[slot[:, None], col], mask=key_ok, other=0)
            else:
                k, v = k_ref[slot[:, None], col], v_ref[slot[:, None], col]
            s = pc.log2_scores(plgpu.dot(q, k, trans_b=True, precision=EXACT), scale, soft_cap)
            if masked:
                seen = pc.visible_keys(kpos[None, :], q_pos[:, None], kv_end, sliding_window)
                # Masked logits are set after scaling, to exactly MASKED: a row that has seen
                # nothing yet then gets exp2(MASKED - MASKED) = 1 (wiped by alpha = 0 at its
                # first real key), never exp2 of a rounding residual of MASKED * scale.
                s = jnp.where(seen, s, pc.MASKED)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s - m_new[:, None])
            row_sum = row_sum * alpha + jnp.sum(p, axis=1)
            acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v, precision=EXACT)
            return acc, m_new, row_sum

        lo, free_lo, free_hi, hi = pc.kv_chunk_bounds(first_pos, count, block_k, sliding_window)
        a, b = pc.split_range(lo, hi, split, num_splits)
        carry = (
            jnp.zeros((num_rows, q.shape[1]), jnp.float32),
            jnp.full((num_rows,), pc.MASKED, jnp.float32),
            jnp.zeros((num_rows,), jnp.float32),
        )
        masked_step = functools.partial(step, masked=True)
        free_step = functools.partial(step, masked=False)
        if sliding_window is not None:
            carry = jax.lax.fori_loop(a, jnp.minimum(free_lo, b), masked_step, carry)
        carry = jax.lax.fori_loop(
            jnp.maximum(free_lo, a), jnp.minimum(free_hi, b), free_step, carry
        )
        acc, m, row_sum = jax.lax.fori_loop(jnp.maximum(free_hi, a), b, masked_step, carry)
        out = acc / jnp.where(row_sum > 0, row_sum, 1.0)[:, None]
        plgpu.store(o_ref.at[qrow[:, None], col], out.astype(o_ref.dtype), mask=row_ok[:, None])
        if stat_refs:
            m_ref, l_ref = stat_refs
            plgpu.store(m_ref.at[qrow], m, mask=row_ok)
            plgpu.store(l_ref.at[qrow], row_sum, mask=row_ok)

    if small_rows < rows:
        # A tile holding a single decode token needs only `small_rows` MMA rows: don't pay
        # for `rows` of them when decodes share the launch with prefill chunks.
        pl.when((count > 0) & (count * group <= small_rows))(
            lambda: attend(small_rows, small_block_k)
        )
        pl.when(count * group > small_rows)(lambda: attend(rows, block_k))
    else:
        pl.when(count > 0)(lambda: attend(rows, block_k))


@dataclasses.dataclass(frozen=True)
class Launch:
    """Static shape of one kernel launch, fixed by the step's shapes and the config."""

    config: GpuKernelConfig
    block_q: int  # tokens per query tile
    rows: int  # MMA rows of a tile (block_q x group, padded to a power of two >= 16)
    small_rows: int  # MMA rows used for tiles of a single decode token
    bt_width: int  # block-table width padded to whole chunks
    splits: int  # programs sharing one tile's keys


def plan_launch(shape: AttentionShape, md: AttentionMetadata, config: GpuKernelConfig | None = None) -> Launch:
    num_tokens, block_size, num_kv_heads, group = shape.num_tokens, shape.block_size, shape.num_kv_heads, shape.group
    num_seqs, width = md.block_tables.shape
    cfg = config or _fit_default(default_config(md.max_query_len), num_tokens * group * num_kv_heads)
    block_q = pc.pick_block_q(md.max_query_len, group, cfg.rows)
    rows = max(16, pc.next_pow2(block_q * group))
    num_tiles = pc.max_query_tiles(num_tokens, num_seqs, block_q)
    max_chunks = -(-width * block_size // cfg.block_k)
    # Key chunks and blocks are powers of two, so whole chunks span whole blocks.
    widest = max(cfg.block_k, cfg.small_block_k)
    bt_width = max(width, -(-width * block_size // widest) * widest // block_size)
    splits = cfg.kv_splits or pc.pick_kv_splits(
        num_tiles * num_kv_heads, max_chunks, cfg.target_programs
    )
    return Launch(cfg, block_q, rows, min(rows, max(16, pc.next_pow2(group))), bt_width, splits)


@struct.dataclass
class GpuStepPlan(StepPlan):
    """The kernel's per-step tables, built once and shared by every layer."""

    tiles: jax.Array  # [num_tiles, TILE_FIELDS], see ops.pallas_common
    block_tables: jax.Array  # flat, each row padded to launch.bt_width
    launch: Launch = struct.field(pytree_node=False)


def plan_step(md: AttentionMetadata, shape: AttentionShape, config: GpuKernelConfig | None = None) -> GpuStepPlan:
    """The launch shape, the tile table and the flat, padded block table of one step."""
    launch = plan_launch(shape, md, config)
    tiles = pc.build_tile_table(md, shape.num_tokens, launch.block_q)
    width = md.block_tables.shape[1]
    # Padded entries are only ever used for masked (never loaded) keys.
    tables = jnp.pad(md.block_tables, ((0, 0), (0, launch.bt_width - width)))
    return GpuStepPlan(md, tiles, tables.reshape(-1), launch)


def run_kernel(
    q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: GpuStepPlan, spec: AttentionSpec, interpret: bool
) -> jax.Array:
    num_tokens, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    launch, tiles = plan.launch, plan.tiles
    cfg, splits = launch.config, launch.splits
    rows_total = num_tokens * num_heads
    whole = pl.BlockSpec()
    # The pools are read through a free reshape to [slots, kv_heads, head_dim]; the kv-head axis
    # is squeezed by the grid so a program sees only its head's rows.
    kv_spec = pl.BlockSpec((num_blocks * block_size, None, head_dim), lambda t, h, s: (0, h, 0))
    if splits == 1:
        out_shape = [jax.ShapeDtypeStruct((rows_total, head_dim), q.dtype)]
        out_specs = [whole]
    else:
        out_shape = [
            jax.ShapeDtypeStruct((splits, rows_total, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((splits, rows_total), jnp.float32),
            jax.ShapeDtypeStruct((splits, rows_total), jnp.float32),
        ]
        out_specs = [
            pl.BlockSpec((None, rows_total, head_dim), lambda t, h, s: (s, 0, 0)),
            pl.BlockSpec((None, rows_total), lambda t, h, s: (s, 0)),
            pl.BlockSpec((None, rows_total), lambda t, h, s: (s, 0)),
        ]
    kernel = functools.partial(
        _kernel, rows=launch.rows, small_rows=launch.small_rows, group=num_heads // num_kv_heads,
        num_heads=num_heads, block_q=launch.block_q, block_k=cfg.block_k,
        small_block_k=cfg.small_block_k, block_size=block_size,
        bt_width=launch.bt_width, num_splits=splits, rows_total=rows_total, head_dim=head_dim,
        scale=spec.scale, soft_cap=spec.soft_cap, sliding_window=spec.sliding_window,
    )
    results = pl.pallas_call(
        kernel,
        grid=(tiles.shape[0], num_kv_heads, splits),
        in_specs=[whole, whole, whole, kv_spec, kv_spec],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name="ragged_paged_attention",
    )(
        tiles,
        plan.block_tables,
        q.reshape(rows_total, head_dim),
        k_cache.reshape(num_blocks * block_size, num_kv_heads, head_dim),
        v_cache.reshape(num_blocks * block_size, num_kv_heads, head_dim),
    )
    out = results[0] if splits == 1 else pc.combine_splits(*results).astype(q.dtype)
    return pc.mask_padding(out.reshape(num_tokens, num_heads, head_dim), plan.md.query_start_loc[-1])


@dataclasses.dataclass(frozen=True)
class PallasGpuAttention(AttentionBackend[StepPlan]):
    """The kernel, with the step's tables built in ``prepare``; unsupported shapes run the reference."""

    config: GpuKernelConfig | None = None  # None: DECODE_CONFIG or PREFILL_CONFIG, fitted to the step
    interpret: bool | None = None  # None: interpret when not on a GPU

    def prepare(self, md: AttentionMetadata, shape: AttentionShape) -> StepPlan:
        return plan_step(md, shape, self.config) if supported(shape) else StepPlan(md)

    def attend(
        self, q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: StepPlan, spec: AttentionSpec
    ) -> jax.Array:
        if not isinstance(plan, GpuStepPlan):
            return ReferenceAttention().attend(q, k_cache, v_cache, plan, spec)
        interpret = self.interpret if self.interpret is not None else jax.default_backend() != "gpu"
        return run_kernel(q, k_cache, v_cache, plan, spec, interpret)
