"""One Flax (linen) decoder covering Llama 2/3/3.1, SmolLM2, Mistral, Qwen2/2.5 and Qwen3.

The families differ only in flags of ``ModelConfig``: qkv bias (Qwen2), q/k RMSNorm (Qwen3),
sliding window (Mistral), rope scaling (Llama 3.1), tied embeddings (SmolLM2, small Qwens).
Layers are unrolled in Python and each owns its K/V pools, so the jitted step updates every
pool in place (a cache carried through ``lax.scan`` gets copied; see docs/architecture.md).
``LLAMA_WEIGHTS`` declares every parameter the modules below create, under all its names.
The attention backend's step plan is built once per step here and shared by every layer.

Each block runs under a ``jax.named_scope`` (embed, attention_plan, layer_i, attention with its
rope and paged_attention, mlp, final_norm, lm_head), so a profile names the ops as this code does,
whatever Flax adds of its own (module names, with ``flax_profile`` on).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.rope import apply_rope, inverse_frequencies
from models.weight_table import NORM_AXES, LogicalAxes, Weight, WeightTable
from ops.attention_backend import AttentionBackend, AttentionShape, AttentionSpec
from ops.attention_metadata import AttentionMetadata, StepPlan
from ops.reference_attention import ReferenceAttention

KVCache = tuple[jax.Array, jax.Array]

# Logical axes name dimensions; sharding/ maps them onto mesh axes (the model never names one).
LLAMA_WEIGHTS = WeightTable(
    family="llama",
    model=(
        Weight(("embed_tokens", "embedding"), ("vocab", "embed"), "model.embed_tokens.weight", "token_embd.weight"),
        Weight(("norm", "scale"), NORM_AXES, "model.norm.weight", "output_norm.weight"),
        Weight(("lm_head", "kernel"), ("embed", "vocab"), "lm_head.weight", "output.weight", transpose=True),
    ),
    layer=(
        Weight(("input_layernorm", "scale"), NORM_AXES, "input_layernorm.weight", "attn_norm.weight"),
        Weight(("self_attn", "q_proj", "kernel"), ("embed", "q_heads"),
               "self_attn.q_proj.weight", "attn_q.weight", transpose=True),
        Weight(("self_attn", "q_proj", "bias"), ("q_heads",), "self_attn.q_proj.bias", "attn_q.bias"),
        Weight(("self_attn", "k_proj", "kernel"), ("embed", "kv_heads"),
               "self_attn.k_proj.weight", "attn_k.weight", transpose=True),
        Weight(("self_attn", "k_proj", "bias"), ("kv_heads",), "self_attn.k_proj.bias", "attn_k.bias"),
        Weight(("self_attn", "v_proj", "kernel"), ("embed", "kv_heads"),
               "self_attn.v_proj.weight", "attn_v.weight", transpose=True),
        Weight(("self_attn", "v_proj", "bias"), ("kv_heads",), "self_attn.v_proj.bias", "attn_v.bias"),
        Weight(("self_attn", "q_norm", "scale"), NORM_AXES, "self_attn.q_norm.weight", "attn_q_norm.weight"),
        Weight(("self_attn", "k_norm", "scale"), NORM_AXES, "self_attn.k_norm.weight", "attn_k_norm.weight"),
        Weight(("self_attn", "o_proj", "kernel"), ("q_heads", "embed"),
               "self_attn.o_proj.weight", "attn_output.weight", transpose=True),
        Weight(("post_attention_layernorm", "scale"), NORM_AXES, "post_attention_layernorm.weight", "ffn_norm.weight"),
        Weight(("mlp", "gate_proj", "kernel"), ("embed", "mlp"), "mlp.gate_proj.weight", "ffn_gate.weight",
               transpose=True),
        Weight(("mlp", "up_proj", "kernel"), ("embed", "mlp"), "mlp.up_proj.weight", "ffn_up.weight", transpose=True),
        Weight(("mlp", "down_proj", "kernel"), ("mlp", "embed"), "mlp.down_proj.weight", "ffn_down.weight",
               transpose=True),
    ),
)
KV_CACHE_LOGICAL_AXES: LogicalAxes = ("kv_blocks", None, "kv_heads", None)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale * normed.astype(self.dtype)


def _dense(features: int, dtype: jnp.dtype, name: str, bias: bool = False) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=dtype, name=name)


class Attention(nn.Module):
    config: ModelConfig
    backend: AttentionBackend[Any]  # per head shard when tensor parallelism splits the heads

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: KVCache, plan: StepPlan
    ) -> tuple[jax.Array, KVCache]:
        c = self.config
        dt = c.jnp_dtype
        tokens = x.shape[0]
        q = _dense(c.num_heads * c.head_dim, dt, "q_proj", c.attention_bias)(x)
        k = _dense(c.num_kv_heads * c.head_dim, dt, "k_proj", c.attention_bias)(x)
        v = _dense(c.num_kv_heads * c.head_dim, dt, "v_proj", c.attention_bias)(x)
        q = q.reshape(tokens, c.num_heads, c.head_dim)
        k = k.reshape(tokens, c.num_kv_heads, c.head_dim)
        v = v.reshape(tokens, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q = RMSNorm(c.rms_norm_eps, dt, name="q_norm")(q)
            k = RMSNorm(c.rms_norm_eps, dt, name="k_norm")(k)
        inv_freq = inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling_dict)
        with jax.named_scope("rope"):
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        spec = AttentionSpec(scale=c.head_dim**-0.5, sliding_window=c.sliding_window)
        with jax.named_scope("paged_attention"):
            out, k_cache, v_cache = self.backend.write_and_attend(q, k, v, *cache, plan, spec)
        out = _dense(c.hidden_size, dt, "o_proj")(out.reshape(tokens, c.num_heads * c.head_dim))
        return out, (k_cache, v_cache)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        gate = _dense(c.intermediate_size, c.jnp_dtype, "gate_proj")(x)
        up = _dense(c.intermediate_size, c.jnp_dtype, "up_proj")(x)
        return _dense(c.hidden_size, c.jnp_dtype, "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: ModelConfig
    backend: AttentionBackend[Any]

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: KVCache, plan: StepPlan
    ) -> tuple[jax.Array, KVCache]:
        c = self.config
        with jax.named_scope("attention"):
            h, cache = Attention(c, self.backend, name="self_attn")(
                RMSNorm(c.rms_norm_eps, c.jnp_dtype, name="input_layernorm")(x), positions, cache, plan
            )
            x = x + h
        with jax.named_scope("mlp"):
            x = x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, c.jnp_dtype, name="post_attention_layernorm")(x))
        return x, cache


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decoder_layer(config: ModelConfig, backend: AttentionBackend[Any], params: dict[str, Any], x: jax.Array,
                   positions: jax.Array, cache: KVCache, plan: StepPlan) -> tuple[jax.Array, KVCache]:
    """One decoder layer as a function of its parameters: a step traces and lowers it once and
    calls it for every layer (XLA inlines the calls), so a program's tracing time no longer grows
    with the depth of the model (docs/compilation.md)."""
    layer = DecoderLayer(config, backend, parent=None)
    return layer.apply({"params": params}, x, positions, cache, plan)  # type: ignore[return-value]


class CausalLM(nn.Module):
    """``__call__`` runs the decoder over a packed batch; ``logits`` projects chosen hidden rows."""

    config: ModelConfig
    backend: AttentionBackend[Any] = ReferenceAttention()  # models.registry.build_model picks the engine's

    def setup(self) -> None:
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.jnp_dtype, param_dtype=c.jnp_dtype)
        self.layers = [DecoderLayer(c, self.backend) for _ in range(c.num_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, c.jnp_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = _dense(c.vocab_size, c.jnp_dtype, "lm_head")

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        kv_caches: list[KVCache],
        md: AttentionMetadata,
    ) -> tuple[jax.Array, list[KVCache]]:
        with jax.named_scope("embed"):
            x = self.embed_tokens(input_ids)
        c = self.config
        shape = AttentionShape.of((input_ids.shape[0], c.num_heads, c.head_dim), kv_caches[0][0].shape)
        with jax.named_scope("attention_plan"):
            plan = self.backend.prepare(md, shape)
        new_caches = []
        for i, (layer, cache) in enumerate(zip(self.layers, kv_caches, strict=True)):
            with jax.named_scope(f"layer_{i}"):
                if self.is_initializing():  # init must see every layer create its parameters
                    x, cache = layer(x, positions, cache, plan)
                else:
                    params = self.variables["params"][f"layers_{i}"]
                    x, cache = _decoder_layer(c, self.backend, params, x, positions, cache, plan)
            new_caches.append(cache)
        with jax.named_scope("final_norm"):
            return self.norm(x), new_caches

    def forward_to_logits(
        self, input_ids: jax.Array, positions: jax.Array, kv_caches: list[KVCache], md: AttentionMetadata
    ) -> jax.Array:
        """Touches every parameter; ``init`` uses it to learn the full parameter tree."""
        hidden, _ = self(input_ids, positions, kv_caches, md)
        return self.logits(hidden)

    def logits(self, hidden: jax.Array) -> jax.Array:
        with jax.named_scope("lm_head"):
            out = self.embed_tokens.attend(hidden) if self.config.tie_word_embeddings else self.lm_head(hidden)
            return out.astype(jnp.float32)
