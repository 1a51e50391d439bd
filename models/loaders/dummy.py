"""Random weights of a config's shape, generated on device (``load_format="dummy"``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import unflatten_dict

from models.config import ModelConfig
from models.weights import ParamPath, param_shapes

ShardingFor = Callable[[ParamPath, tuple[int, ...]], Any]


def dummy_params(config: ModelConfig, seed: int = 0, sharding_for: ShardingFor | None = None) -> dict[str, Any]:
    """Normal(0, 0.02) projections and unit norms; each tensor made directly where it lives."""
    shapes = param_shapes(config)
    key = jax.random.key(seed)
    params = {}
    for i, (path, spec) in enumerate(sorted(shapes.items())):
        sharding = sharding_for(path, spec.shape) if sharding_for else None
        is_norm = path[-1] == "scale"

        def make(k: jax.Array, shape: tuple[int, ...] = spec.shape, norm: bool = is_norm) -> jax.Array:
            if norm:
                return jnp.ones(shape, config.jnp_dtype)
            return (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(config.jnp_dtype)

        params[path] = jax.jit(make, out_shardings=sharding)(jax.random.fold_in(key, i))
    return unflatten_dict(params)
