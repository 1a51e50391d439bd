"""Maps a checkpoint's ``architectures[0]`` to the Flax module that runs it."""

from __future__ import annotations

from models.config import ModelConfig
from models.llama import CausalLM
from ops.attention import get_backend
from ops.head_sharded_attention import HeadSharding

SUPPORTED_ARCHITECTURES: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": CausalLM,
    "MistralForCausalLM": CausalLM,
    "Qwen2ForCausalLM": CausalLM,
    "Qwen3ForCausalLM": CausalLM,
}


def build_model(
    config: ModelConfig, attention_backend: str = "reference", heads: HeadSharding | None = None
) -> CausalLM:
    module = SUPPORTED_ARCHITECTURES.get(config.architecture)
    if module is None:
        raise ValueError(
            f"unsupported architecture {config.architecture!r}; "
            f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    return module(config, get_backend(attention_backend, heads))
