"""Places HF-named tensors into the Flax parameter tree, one tensor at a time.

Every loader yields ``(hf_name, numpy array in HF layout)`` pairs; this module maps each name
to its parameter path, transposes projections to Flax's ``[in, out]``, checks the shape, casts
to the model dtype and hands it to ``place`` (which puts it on device, sharded or not) before
the next tensor is read, so the host never holds two copies of the weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from models.config import ModelConfig
from models.llama import CausalLM
from ops.attention_metadata import AttentionMetadata

ParamPath = tuple[str, ...]
Placement = Callable[[ParamPath, np.ndarray], jax.Array]

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_LEAVES: dict[str, tuple[ParamPath, bool]] = {
    "self_attn.q_proj.weight": (("self_attn", "q_proj", "kernel"), True),
    "self_attn.k_proj.weight": (("self_attn", "k_proj", "kernel"), True),
    "self_attn.v_proj.weight": (("self_attn", "v_proj", "kernel"), True),
    "self_attn.o_proj.weight": (("self_attn", "o_proj", "kernel"), True),
    "self_attn.q_proj.bias": (("self_attn", "q_proj", "bias"), False),
    "self_attn.k_proj.bias": (("self_attn", "k_proj", "bias"), False),
    "self_attn.v_proj.bias": (("self_attn", "v_proj", "bias"), False),
    "self_attn.q_norm.weight": (("self_attn", "q_norm", "scale"), False),
    "self_attn.k_norm.weight": (("self_attn", "k_norm", "scale"), False),
    "input_layernorm.weight": (("input_layernorm", "scale"), False),
    "post_attention_layernorm.weight": (("post_attention_layernorm", "scale"), False),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), True),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), True),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), True),
}
_TOP_LEAVES: dict[str, tuple[ParamPath, bool]] = {
    "model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
    "model.norm.weight": (("norm", "scale"), False),
    "lm_head.weight": (("lm_head", "kernel"), True),
}
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.rotary_emb\.)")


def hf_name_to_path(name: str) -> tuple[ParamPath, bool] | None:
    """The parameter path and whether to transpose, or None for tensors the model does not use."""
    if name in _TOP_LEAVES:
        return _TOP_LEAVES[name]
    match = _LAYER.match(name)
    if match and match.group(2) in _LAYER_LEAVES:
        path, transpose = _LAYER_LEAVES[match.group(2)]
        return (f"layers_{match.group(1)}", *path), transpose
    return None


def param_shapes(config: ModelConfig) -> dict[ParamPath, jax.ShapeDtypeStruct]:
    """Every parameter's path and abstract shape, computed without allocating anything."""
    model = CausalLM(config)
    md = AttentionMetadata(
        slot_mapping=jnp.zeros(1, jnp.int32), block_tables=jnp.zeros((1, 1), jnp.int32),
        seq_lens=jnp.zeros(1, jnp.int32), query_start_loc=jnp.zeros(2, jnp.int32),
    )
    cache = jax.ShapeDtypeStruct((1, 1, config.num_kv_heads, config.head_dim), config.jnp_dtype)
    caches = [(cache, cache)] * config.num_layers
    abstract = jax.eval_shape(
        lambda c: model.init(
            jax.random.key(0), np.zeros(1, np.int32), np.zeros(1, np.int32), c, md,
            method=CausalLM.forward_to_logits,
        ),
        caches,
    )
    return flatten_dict(abstract["params"])


def default_placement(path: ParamPath, array: np.ndarray) -> jax.Array:
    return jax.device_put(array)


def assemble_params(
    tensors: Iterable[tuple[str, np.ndarray]],
    config: ModelConfig,
    place: Placement = default_placement,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """Builds the parameter tree from a stream of HF-named tensors; errors name the tensor."""
    expected = param_shapes(config)
    placed: dict[ParamPath, jax.Array] = {}
    for name, array in tensors:
        target = hf_name_to_path(name)
        if target is None:
            if _IGNORED.search(name) or (name == "lm_head.weight" and config.tie_word_embeddings):
                continue
            raise ValueError(f"{source}: unexpected tensor {name!r} for {config.architecture}")
        path, transpose = target
        if path not in expected:
            raise ValueError(f"{source}: tensor {name!r} has no place in {config.architecture}")
        if transpose:
            array = array.T
        want = expected[path].shape
        if tuple(array.shape) != tuple(want):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(array.shape)}, expected {tuple(want)}"
            )
        placed[path] = place(path, np.ascontiguousarray(array, dtype=config.jnp_dtype))
    missing = sorted(".".join(p) for p in expected if p not in placed)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"{source}: {len(missing)} parameters missing from the checkpoint: {shown}")
    return unflatten_dict(placed)
