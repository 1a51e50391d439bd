"""Profiles read like the code: the model's blocks carry their ``jax.named_scope`` names into the
lowered program's op metadata (what a profiler's trace shows for each op)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from models.loaders.dummy import dummy_params
from models.registry import build_model
from ops.attention_metadata import AttentionMetadata
from tests.tiny_models import tiny_config


def _op_names() -> set[str]:
    config = tiny_config()
    model = build_model(config, "reference", None)
    params = dummy_params(config, seed=0)
    tokens, block_size = 4, 16
    shape = (8, block_size, config.num_kv_heads, config.head_dim)
    caches = [(jnp.zeros(shape, config.jnp_dtype),) * 2 for _ in range(config.num_layers)]
    md = AttentionMetadata(slot_mapping=jnp.arange(tokens), block_tables=jnp.zeros((1, 2), jnp.int32),
                           seq_lens=jnp.array([tokens]), query_start_loc=jnp.array([0, tokens]), max_query_len=tokens)

    def forward(params: dict, ids: jax.Array) -> jax.Array:
        hidden, _ = model.apply({"params": params}, ids, jnp.arange(tokens), caches, md)
        return model.apply({"params": params}, hidden, method=type(model).logits)

    text = jax.jit(forward).lower(params, jnp.zeros(tokens, jnp.int32)).as_text(debug_info=True)
    return set(re.findall(r'loc\("([^"]+)"', text))


def test_blocks_name_their_ops() -> None:
    names = _op_names()
    for scope in ("embed/", "layer_0/", "layer_1/", "/attention/", "/rope", "/paged_attention", "/mlp/",
                  "final_norm/", "lm_head"):
        assert any(scope in name for name in names), f"no op under {scope!r}"
