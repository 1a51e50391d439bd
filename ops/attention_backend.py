"""The interface every attention backend implements, and the KV-cache write they share.

A backend is one object with two steps, so that work which depends only on the step (the
Pallas kernels' tile tables, padded block tables) is done once per step and not once per layer:

    plan = backend.prepare(md, shape)           # once per step, in the model's top scope
    out, k_cache, v_cache = backend.write_and_attend(q, k, v, k_cache, v_cache, plan, spec)

``paged_attention`` runs both for a single call (tests, benchmarks) and is the one place the
attention contract is written down. Backends are frozen dataclasses whose fields are their
options (kernel configs, interpret mode); ``ops.attention`` registers them by name.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from ops.attention_metadata import AttentionMetadata, StepPlan


@dataclasses.dataclass(frozen=True)
class AttentionShape:
    """The static sizes a backend plans a step with (per device when heads are split)."""

    num_tokens: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    @classmethod
    def of(cls, q_shape: tuple[int, ...], cache_shape: tuple[int, ...]) -> AttentionShape:
        """From ``q[T, heads, head_dim]`` and a pool ``[blocks, block_size, kv_heads, head_dim]``."""
        num_tokens, num_heads, head_dim = q_shape
        return cls(num_tokens, num_heads, cache_shape[2], head_dim, cache_shape[1])

    @property
    def group(self) -> int:
        """Query heads per kv head (GQA/MQA)."""
        return self.num_heads // self.num_kv_heads

    def split_heads(self, shards: int) -> AttentionShape:
        """The shape each of ``shards`` devices sees when both head axes are split evenly."""
        return dataclasses.replace(self, num_heads=self.num_heads // shards,
                                   num_kv_heads=self.num_kv_heads // shards)


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """One layer's static attention settings."""

    scale: float
    sliding_window: int | None = None  # attend only to the last this-many keys
    soft_cap: float | None = None  # logits become soft_cap * tanh(logits / soft_cap)


class AttentionBackend[Plan: StepPlan](abc.ABC):
    """Paged attention over the packed, ragged batch of ``ops.attention_metadata``."""

    def prepare(self, md: AttentionMetadata, shape: AttentionShape) -> Plan:
        """The step's work shared by all layers; backends with none keep this plain ``StepPlan(md)``."""
        return StepPlan(md)  # type: ignore[return-value]  # Plan is StepPlan for backends that keep it

    @abc.abstractmethod
    def attend(
        self, q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, plan: Plan, spec: AttentionSpec
    ) -> jax.Array:
        """Attention of ``q`` over pools that already hold this step's K/V (``paged_attention``)."""

    def write_and_attend(
        self, q: jax.Array, k: jax.Array, v: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
        plan: Plan, spec: AttentionSpec,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Writes the step's K/V ``[T, kv_heads, head_dim]``, then attends; returns (out, k_cache, v_cache)."""
        k_cache, v_cache = write_kv(k_cache, v_cache, k, v, plan.md.slot_mapping)
        return self.attend(q, k_cache, v_cache, plan, spec), k_cache, v_cache

    def paged_attention(
        self,
        q: jax.Array,
        k_cache: jax.Array,
        v_cache: jax.Array,
        md: AttentionMetadata,
        *,
        scale: float,
        sliding_window: int | None = None,
        soft_cap: float | None = None,
    ) -> jax.Array:
        """Causal attention of packed queries over their sequences' cached context.

        Query ``i`` of a sequence with ``q_len`` new tokens and context ``seq_len`` sits at
        position ``seq_len - q_len + i`` and sees keys ``0 .. that position`` (and only the
        last ``sliding_window`` of them when set). GQA/MQA: query head ``h`` reads kv head
        ``h // (num_heads // num_kv_heads)``. Returns ``[T, num_heads, head_dim]`` in q's dtype.
        """
        plan = self.prepare(md, AttentionShape.of(q.shape, k_cache.shape))
        return self.attend(q, k_cache, v_cache, plan, AttentionSpec(scale, sliding_window, soft_cap))


def write_kv(
    k_cache: jax.Array, v_cache: jax.Array, k: jax.Array, v: jax.Array, slot_mapping: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Scatters new K/V ``[T, kv_heads, head_dim]`` into their slots; padding slots are dropped.

    The scatter indexes the pool's own leading two axes (no reshaped view), so with the pool
    donated XLA updates it in place.
    """
    num_blocks, block_size = k_cache.shape[:2]
    block = jnp.where(slot_mapping < 0, num_blocks, slot_mapping // block_size)
    offset = slot_mapping % block_size
    k_cache = k_cache.at[block, offset].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[block, offset].set(v.astype(v_cache.dtype), mode="drop")
    return k_cache, v_cache
