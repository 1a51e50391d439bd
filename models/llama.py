"""One Flax (linen) decoder covering Llama 2/3/3.1, SmolLM2, Mistral, Qwen2/2.5 and Qwen3.

The families differ only in flags of ``ModelConfig``: qkv bias (Qwen2), q/k RMSNorm (Qwen3),
sliding window (Mistral), rope scaling (Llama 3.1), tied embeddings (SmolLM2, small Qwens).
Layers are unrolled in Python and each owns its K/V pools, so the jitted step updates every
pool in place (a cache carried through ``lax.scan`` gets copied; see docs/architecture.md).

Each block runs under a ``jax.named_scope`` (embed, layer_i, attention with its rope and
paged_attention, mlp, final_norm, lm_head), so a profile names the ops as this code does, whatever
Flax adds of its own (module names, with ``flax_profile`` on).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.rope import apply_rope, inverse_frequencies
from ops.attention import AttentionMetadata, paged_attention, write_kv
from ops.head_sharded_attention import HeadSharding, head_sharded_write_and_attend

KVCache = tuple[jax.Array, jax.Array]

# Logical axes of every parameter, by the last two path components (module, leaf).
# sharding/ maps these names onto mesh axes; the model never names a mesh axis.
PARAM_LOGICAL_AXES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("q_proj", "kernel"): ("embed", "q_heads"),
    ("q_proj", "bias"): ("q_heads",),
    ("k_proj", "kernel"): ("embed", "kv_heads"),
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "kernel"): ("embed", "kv_heads"),
    ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "kernel"): ("q_heads", "embed"),
    ("gate_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
}
NORM_LOGICAL_AXES: tuple[str | None, ...] = ("norm",)
KV_CACHE_LOGICAL_AXES: tuple[str | None, ...] = ("kv_blocks", None, "kv_heads", None)


def logical_axes_of(path: tuple[str, ...]) -> tuple[str | None, ...]:
    return PARAM_LOGICAL_AXES.get(tuple(path[-2:]), NORM_LOGICAL_AXES)


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
    backend: str
    heads: HeadSharding | None = None  # set when tensor parallelism splits the heads

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: KVCache, md: AttentionMetadata
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
        attend = dict(scale=c.head_dim**-0.5, sliding_window=c.sliding_window, backend=self.backend)
        with jax.named_scope("paged_attention"):
            if self.heads is not None:
                out, k_cache, v_cache = head_sharded_write_and_attend(q, k, v, *cache, md, self.heads, **attend)
            else:
                k_cache, v_cache = write_kv(cache[0], cache[1], k, v, md.slot_mapping)
                out = paged_attention(q, k_cache, v_cache, md, **attend)
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
    backend: str
    heads: HeadSharding | None = None

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: KVCache, md: AttentionMetadata
    ) -> tuple[jax.Array, KVCache]:
        c = self.config
        with jax.named_scope("attention"):
            h, cache = Attention(c, self.backend, self.heads, name="self_attn")(
                RMSNorm(c.rms_norm_eps, c.jnp_dtype, name="input_layernorm")(x), positions, cache, md
            )
            x = x + h
        with jax.named_scope("mlp"):
            x = x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, c.jnp_dtype, name="post_attention_layernorm")(x))
        return x, cache


class CausalLM(nn.Module):
    """``__call__`` runs the decoder over a packed batch; ``logits`` projects chosen hidden rows."""

    config: ModelConfig
    backend: str = "reference"
    heads: HeadSharding | None = None  # the mesh axis splitting heads (sharding.ModelSharding.head_sharding)

    def setup(self) -> None:
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.jnp_dtype, param_dtype=c.jnp_dtype)
        self.layers = [DecoderLayer(c, self.backend, self.heads) for _ in range(c.num_layers)]
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
        new_caches = []
        for i, (layer, cache) in enumerate(zip(self.layers, kv_caches, strict=True)):
            with jax.named_scope(f"layer_{i}"):
                x, cache = layer(x, positions, cache, md)
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
