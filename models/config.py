"""Model hyper-parameters, parsed from a HuggingFace ``config.json`` dictionary."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def jnp_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def with_dtype(self, dtype: str) -> ModelConfig:
        """``dtype="auto"`` keeps the checkpoint's; otherwise one of DTYPES' names or aliases."""
        return dataclasses.replace(self, dtype=resolve_dtype(dtype, self.dtype))

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        archs = hf.get("architectures") or [_ARCH_BY_MODEL_TYPE.get(hf.get("model_type", ""), "")]
        arch = archs[0]
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = hf.get("head_dim") or hidden // num_heads
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        rope_scaling = hf.get("rope_scaling") or (hf.get("rope_parameters") or None)
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) in (None, "default"):
            rope_scaling = None
        rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
        if arch.startswith("Qwen2") and not hf.get("use_sliding_window", False):
            window = None
        return cls(
            architecture=arch,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=tuple(sorted(rope_scaling.items())) if rope_scaling else None,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(
                hf["attention_bias"] if hf.get("attention_bias") is not None else arch.startswith("Qwen2")
            ),
            qk_norm=arch.startswith("Qwen3"),
            sliding_window=int(window) if window else None,
            dtype=resolve_dtype(str(hf.get("torch_dtype") or hf.get("dtype") or "float32"), "float32"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


_ARCH_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

_DTYPE_ALIASES = {
    "float": "float32", "fp32": "float32", "float32": "float32",
    "half": "float16", "fp16": "float16", "float16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}


def resolve_dtype(requested: str, checkpoint_dtype: str) -> str:
    requested = requested.removeprefix("torch.")
    if requested == "auto":
        return _DTYPE_ALIASES.get(checkpoint_dtype.removeprefix("torch."), "float32")
    if requested not in _DTYPE_ALIASES:
        raise ValueError(f"unsupported dtype {requested!r}; use auto, float32, bfloat16 or float16")
    return _DTYPE_ALIASES[requested]
