"""Places HF-named tensors into the Flax parameter tree, one tensor at a time.

Every loader yields ``(hf_name, numpy array in HF layout)`` pairs; this module looks each name
up in the model family's weight table (``models.weight_table``), transposes projections to
Flax's ``[in, out]``, checks the shape, casts to the model dtype and hands it to ``place``
(which puts it on device, sharded or not) before the next tensor is read, so the host never
holds two copies of the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from models.config import ModelConfig
from models.registry import model_family
from models.weight_table import ParamPath, Weight
from ops.attention_metadata import AttentionMetadata

# Where a parameter goes: a device or sharding for each declared weight of a given shape.
ShardingFor = Callable[[Weight, tuple[int, ...]], Any]
Placement = Callable[[Weight, np.ndarray], jax.Array]


def param_shapes(config: ModelConfig) -> dict[ParamPath, jax.ShapeDtypeStruct]:
    """Every parameter's path and abstract shape, computed without allocating anything.

    Raises if the module creates a parameter its family's weight table does not declare.
    """
    family = model_family(config.architecture)
    model = family.module(config)
    md = AttentionMetadata(
        slot_mapping=jnp.zeros(1, jnp.int32), block_tables=jnp.zeros((1, 1), jnp.int32),
        seq_lens=jnp.zeros(1, jnp.int32), query_start_loc=jnp.zeros(2, jnp.int32),
    )
    cache = jax.ShapeDtypeStruct((1, 1, config.num_kv_heads, config.head_dim), config.jnp_dtype)
    caches = [(cache, cache)] * config.num_layers
    abstract = jax.eval_shape(
        lambda c: model.init(
            jax.random.key(0), np.zeros(1, np.int32), np.zeros(1, np.int32), c, md,
            method=family.module.forward_to_logits,
        ),
        caches,
    )
    shapes: dict[ParamPath, jax.ShapeDtypeStruct] = flatten_dict(abstract["params"])
    for path in shapes:
        family.weights.weight_at(path)  # raises for a parameter the table does not declare
    return shapes


def default_placement(weight: Weight, array: np.ndarray) -> jax.Array:
    return jax.device_put(array)


def assemble_params(
    tensors: Iterable[tuple[str, np.ndarray]],
    config: ModelConfig,
    place: Placement = default_placement,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """Builds the parameter tree from a stream of HF-named tensors; errors name the tensor."""
    table = model_family(config.architecture).weights
    expected = param_shapes(config)
    placed: dict[ParamPath, jax.Array] = {}
    for name, array in tensors:
        weight = table.from_hf(name)
        if weight is None:
            if table.ignores_hf(name):
                continue
            raise ValueError(f"{source}: unexpected tensor {name!r} for {config.architecture}")
        if weight.path not in expected:
            raise ValueError(f"{source}: tensor {name!r} has no place in {config.architecture}")
        if weight.transpose:
            array = array.T
        want = expected[weight.path].shape
        if tuple(array.shape) != tuple(want):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(array.shape)}, expected {tuple(want)}"
            )
        placed[weight.path] = place(weight, np.ascontiguousarray(array, dtype=config.jnp_dtype))
    missing = sorted(".".join(p) for p in expected if p not in placed)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"{source}: {len(missing)} parameters missing from the checkpoint: {shown}")
    return unflatten_dict(placed)
