"""Random weights of a config's shape, generated on device (``load_format="dummy"``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import unflatten_dict

from models.config import ModelConfig
from models.registry import model_family
from models.weights import ShardingFor, param_shapes


@functools.cache
def _generator(shape: tuple[int, ...], dtype: Any, norm: bool, sharding: Any) -> Callable[[jax.Array], jax.Array]:
    """One compiled generator per distinct (shape, kind, placement): layers share them."""

    def make(key: jax.Array) -> jax.Array:
        if norm:
            return jnp.ones(shape, dtype)
        return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return jax.jit(make, out_shardings=sharding)


def dummy_params(config: ModelConfig, seed: int = 0, sharding_for: ShardingFor | None = None) -> dict[str, Any]:
    """Normal(0, 0.02) projections and unit norms; each tensor made directly where it lives."""
    key = jax.random.key(seed)
    table = model_family(config.architecture).weights
    params = {}
    for i, (path, spec) in enumerate(sorted(param_shapes(config).items())):
        weight = table.weight_at(path)
        sharding = sharding_for(weight, spec.shape) if sharding_for else None
        make = _generator(tuple(spec.shape), config.jnp_dtype, weight.is_norm, sharding)
        params[path] = make(jax.random.fold_in(key, i))
    return unflatten_dict(params)
