"""KV write + paged attention run per head shard, for tensor parallelism.

A Pallas kernel is a custom call: XLA's SPMD partitioner cannot split it, and with heads split
over a mesh axis it would gather its operands (the whole KV pool) onto every device. Here the
write and the attention run under ``jax.shard_map`` over the heads' mesh axis instead: each
device scatters its own kv heads' new K/V into its own shard of the pool (in place, the pool
is donated by the step) and attends its own query heads over it. Attention is independent per
head, so no collective is needed; the output stays split by heads for ``o_proj``.

It needs the query heads and the kv heads split over the same axis with whole GQA groups on
each device, which ``models.head_layout`` guarantees by padding. The sharding layer builds the
``HeadSharding`` (this module never imports it); the metadata is replicated over that axis.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax.sharding import Mesh, PartitionSpec

from ops.attention import AttentionMetadata, paged_attention, write_kv


@dataclasses.dataclass(frozen=True)
class HeadSharding:
    """The mesh and the mesh axis that splits query and kv heads."""

    mesh: Mesh
    axis: str

    @property
    def size(self) -> int:
        return int(self.mesh.shape[self.axis])


def head_sharded_write_and_attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    md: AttentionMetadata,
    heads: HeadSharding,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    backend: str = "reference",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``write_kv`` then ``paged_attention``, each device on its own heads; returns (out, k_cache, v_cache)."""
    if q.shape[1] % heads.size or k_cache.shape[2] % heads.size:
        raise ValueError(
            f"{q.shape[1]} query / {k_cache.shape[2]} kv heads do not split over {heads.size} shards of "
            f"mesh axis {heads.axis!r}; pad them (models.head_layout)"
        )
    split = PartitionSpec(None, heads.axis, None)
    pool = PartitionSpec(None, None, heads.axis, None)
    per_shard = functools.partial(
        _write_and_attend, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap, backend=backend
    )
    md_specs = jax.tree.map(lambda _: PartitionSpec(), md)
    return jax.shard_map(
        per_shard, mesh=_current_mesh(heads.mesh),
        in_specs=(split, split, split, pool, pool, md_specs),
        out_specs=(split, pool, pool),
        axis_names={heads.axis}, check_vma=False,
    )(q, k, v, k_cache, v_cache, md)


def _write_and_attend(
    q: jax.Array, k: jax.Array, v: jax.Array, k_cache: jax.Array, v_cache: jax.Array, md: AttentionMetadata,
    *, scale: float, sliding_window: int | None, soft_cap: float | None, backend: str,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    k_cache, v_cache = write_kv(k_cache, v_cache, k, v, md.slot_mapping)
    out = paged_attention(q, k_cache, v_cache, md, scale=scale, sliding_window=sliding_window,
                          soft_cap=soft_cap, backend=backend)
    return out, k_cache, v_cache


def _current_mesh(mesh: Mesh) -> Mesh | jax.sharding.AbstractMesh:
    """Inside another shard_map (the dp replicas'), the context's partly manual mesh."""
    context = jax.sharding.get_abstract_mesh()
    return context if not context.empty and context.manual_axes else mesh
