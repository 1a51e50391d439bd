"""Ceilings measured in the same run as a benchmark: copy bandwidth and matmul rate."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def _best_time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(num_bytes: int | None = None) -> float:
    """Bytes read + written per second by a jitted ``x * 2`` (bf16)."""
    if num_bytes is None:
        num_bytes = 2 * 2**30 if jax.default_backend() != "cpu" else 256 * 2**20
    x = jnp.ones((num_bytes // 2,), jnp.bfloat16)
    seconds = _best_time(jax.jit(lambda a: a * 2), x)
    return 2 * num_bytes / seconds


def matmul_rate(n: int | None = None) -> float:
    """bf16 FLOP/s of a jitted ``a @ b`` (n x n x n)."""
    if n is None:
        n = 8192 if jax.default_backend() != "cpu" else 1024
    a = jnp.ones((n, n), jnp.bfloat16)
    seconds = _best_time(jax.jit(lambda x, y: x @ y), a, a)
    return 2 * n**3 / seconds
