"""Attention heads laid out so that any number of shards can split them.

Tensor parallelism gives every shard the same number of query heads and the kv heads those
queries read. When the shard count does not divide the model's heads (SmolLM2-135M: 9 query
/ 3 kv heads over tp=4), the heads are padded instead of refusing the layout:

- kv heads are *copied* (a kv head whose query group is split over several shards is
  replicated once per shard, as vLLM does) and, where still short of a multiple of the shard
  count, completed with *zero* heads;
- query heads are regrouped behind their kv head's copies; empty slots are *zero* heads
  (zero columns in ``q_proj``, zero rows in ``o_proj``), which attend to something finite and
  contribute exactly nothing to the output.

So the padded model computes the same function as the original. ``plan_head_layout`` picks
the layout with the fewest kv heads (the KV cache is the memory that matters), then the fewest
query heads. Each padded head names the original head it copies, or -1 for a zero head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from models.config import ModelConfig
from models.weight_table import LogicalAxes


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    num_heads: int  # the model's query heads
    num_kv_heads: int
    q_source: tuple[int, ...]  # per padded query head: the original head, or -1 (zero)
    kv_source: tuple[int, ...]  # per padded kv head: the original kv head it copies, or -1 (zero)

    @property
    def padded_heads(self) -> int:
        return len(self.q_source)

    @property
    def padded_kv_heads(self) -> int:
        return len(self.kv_source)

    @property
    def is_identity(self) -> bool:
        return self.q_source == tuple(range(self.num_heads)) and self.kv_source == tuple(range(self.num_kv_heads))

    def describe(self) -> str:
        return (f"query heads {self.num_heads} -> {self.padded_heads} "
                f"({self.q_source.count(-1)} zero), kv heads {self.num_kv_heads} -> {self.padded_kv_heads} "
                f"({sum(s >= 0 for s in self.kv_source) - self.num_kv_heads} copies, "
                f"{self.kv_source.count(-1)} zero)")


def plan_head_layout(num_heads: int, num_kv_heads: int, shards: int) -> HeadLayout:
    """The padding that lets ``shards`` split both head axes evenly (identity when they divide)."""
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    group = num_heads // num_kv_heads

    def candidate(new_group: int) -> tuple[int, int, int, int]:  # (kv heads, q heads, new group, copies)
        copies = -(-group // new_group)
        kv = -(-num_kv_heads * copies // shards) * shards
        return kv, kv * new_group, new_group, copies

    # the fewest heads; among equals the largest group (min keeps the first)
    kv_total, _, new_group, copies = min((candidate(g) for g in range(group, 0, -1)), key=lambda c: c[:2])
    kv_source: list[int] = []
    q_source: list[int] = []
    for kv_head in range(num_kv_heads):
        for copy in range(copies):
            kv_source.append(kv_head)
            for slot in range(new_group):
                member = copy * new_group + slot
                q_source.append(kv_head * group + member if member < group else -1)
    zero_kv = kv_total - len(kv_source)
    kv_source += [-1] * zero_kv
    q_source += [-1] * (zero_kv * new_group)
    return HeadLayout(num_heads, num_kv_heads, tuple(q_source), tuple(kv_source))


def padded_config(config: ModelConfig, layout: HeadLayout) -> ModelConfig:
    """The config the padded parameters and KV cache have."""
    return dataclasses.replace(config, num_heads=layout.padded_heads, num_kv_heads=layout.padded_kv_heads)


def head_axis(axes: LogicalAxes) -> tuple[str, int] | None:
    """(``"q_heads"`` or ``"kv_heads"``, the dimension holding heads x head_dim) of a parameter
    with these logical axes (``models.weight_table``), or None when it has no head dimension."""
    for dim, name in enumerate(axes):
        if name in ("q_heads", "kv_heads"):
            return name, dim
    return None


def padded_shape(axes: LogicalAxes, shape: tuple[int, ...], layout: HeadLayout) -> tuple[int, ...]:
    """The shape of a parameter after padding (unchanged for parameters without heads)."""
    entry = head_axis(axes)
    if entry is None:
        return tuple(shape)
    kind, dim = entry
    heads = layout.num_heads if kind == "q_heads" else layout.num_kv_heads
    padded = layout.padded_heads if kind == "q_heads" else layout.padded_kv_heads
    out = list(shape)
    out[dim] = shape[dim] // heads * padded
    return tuple(out)


def head_gather_index(axes: LogicalAxes, shape: tuple[int, ...], layout: HeadLayout) -> tuple[int, np.ndarray] | None:
    """(axis, index) such that taking ``index`` along ``axis`` of ``concat(param, zeros)`` pads it.

    Index ``shape[axis]`` points at the appended zero slice. None for parameters without heads.
    """
    entry = head_axis(axes)
    if entry is None:
        return None
    kind, axis = entry
    heads = layout.num_heads if kind == "q_heads" else layout.num_kv_heads
    source = np.asarray(layout.q_source if kind == "q_heads" else layout.kv_source)
    head_dim = shape[axis] // heads
    within = np.arange(head_dim)
    index = np.where(source[:, None] >= 0, source[:, None] * head_dim + within, shape[axis])
    return axis, index.reshape(-1).astype(np.int32)


def pad_heads(axes: LogicalAxes, array: Any, layout: HeadLayout, xp: Any = np) -> Any:
    """One parameter (with these logical axes) with its heads padded; ``xp`` is numpy or jax.numpy."""
    gather = head_gather_index(axes, tuple(array.shape), layout)
    if gather is None:
        return array
    axis, index = gather
    zero_shape = list(array.shape)
    zero_shape[axis] = 1
    extended = xp.concatenate([array, xp.zeros(zero_shape, array.dtype)], axis=axis)
    return xp.take(extended, index, axis=axis)


def padding_bytes(config: ModelConfig, layout: HeadLayout, itemsize: int) -> tuple[int, int]:
    """(extra weight bytes over all layers, extra KV-cache bytes per token), summed over devices."""
    extra_q = layout.padded_heads - layout.num_heads
    extra_kv = layout.padded_kv_heads - layout.num_kv_heads
    d, hidden, layers = config.head_dim, config.hidden_size, config.num_layers
    weights = layers * d * hidden * (2 * extra_q + 2 * extra_kv) * itemsize
    kv_per_token = layers * 2 * extra_kv * d * itemsize
    return weights, kv_per_token
