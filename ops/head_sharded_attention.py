"""KV write + paged attention run per head shard, for tensor parallelism.

A Pallas kernel is a custom call: XLA's SPMD partitioner cannot split it, and with heads split
over a mesh axis it would gather its operands (the whole KV pool) onto every device. Here the
write and the attention run under ``jax.shard_map`` over the heads' mesh axis instead: each
device scatters its own kv heads' new K/V into its own shard of the pool (in place, the pool
is donated by the step) and attends its own query heads over it. Attention is independent per
head, so no collective is needed; the output stays split by heads for ``o_proj``.

It needs the query heads and the kv heads split over the same axis with whole GQA groups on
each device, which ``models.head_layout`` guarantees by padding. The sharding layer builds the
``HeadSharding`` (this module never imports it). The inner backend's step plan is built once,
outside the ``shard_map``, for one device's share of the heads, and replicated over that axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from ops.attention_backend import AttentionBackend, AttentionShape, AttentionSpec
from ops.attention_metadata import AttentionMetadata, StepPlan


@dataclasses.dataclass(frozen=True)
class HeadSharding:
    """The mesh and the mesh axis that splits query and kv heads."""

    mesh: Mesh
    axis: str

    @property
    def size(self) -> int:
        return int(self.mesh.shape[self.axis])


@dataclasses.dataclass(frozen=True)
class HeadShardedAttention[Plan: StepPlan](AttentionBackend[Plan]):
    """``inner`` run by each device on its own heads; the step plan is built once, replicated."""

    inner: AttentionBackend[Plan]
    heads: HeadSharding

    def prepare(self, md: AttentionMetadata, shape: AttentionShape) -> Plan:
        if shape.num_heads % self.heads.size or shape.num_kv_heads % self.heads.size:
            raise ValueError(
                f"{shape.num_heads} query / {shape.num_kv_heads} kv heads do not split over {self.heads.size} "
                f"shards of mesh axis {self.heads.axis!r}; pad them (models.head_layout)"
            )
        return self.inner.prepare(md, shape.split_heads(self.heads.size))

    def attend(
        self, q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: Plan, spec: AttentionSpec
    ) -> jax.Array:
        queries, pool = self._specs()
        attend = functools.partial(self.inner.attend, spec=spec)
        return self._shard_map(attend, plan, (queries, pool, pool), queries)(q, k_cache, v_cache, plan)

    def write_and_attend(
        self, q: jax.Array, k: jax.Array, v: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
        plan: Plan, spec: AttentionSpec,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        queries, pool = self._specs()
        write_and_attend = functools.partial(self.inner.write_and_attend, spec=spec)
        per_shard = self._shard_map(write_and_attend, plan, (queries, queries, queries, pool, pool),
                                    (queries, pool, pool))
        return per_shard(q, k, v, k_cache, v_cache, plan)

    def _specs(self) -> tuple[PartitionSpec, PartitionSpec]:
        """How ``[T, heads, head_dim]`` tensors and ``[blocks, block_size, kv_heads, head_dim]`` pools split."""
        return PartitionSpec(None, self.heads.axis, None), PartitionSpec(None, None, self.heads.axis, None)

    def _shard_map(self, fn: Callable[..., Any], plan: Plan, in_specs: tuple, out_specs: Any) -> Callable[..., Any]:
        """``fn(*arrays, plan)`` run per head shard (``shard_map`` over the heads' axis), the plan replicated."""
        plan_specs = jax.tree.map(lambda _: PartitionSpec(), plan)
        return jax.shard_map(
            fn, mesh=_current_mesh(self.heads.mesh), in_specs=(*in_specs, plan_specs), out_specs=out_specs,
            axis_names={self.heads.axis}, check_vma=False,
        )


def _current_mesh(mesh: Mesh) -> Mesh | jax.sharding.AbstractMesh:
    """Inside another shard_map (the dp replicas'), the context's partly manual mesh."""
    context = jax.sharding.get_abstract_mesh()
    return context if not context.empty and context.manual_axes else mesh
