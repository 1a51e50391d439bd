"""Maps a checkpoint's ``architectures[0]`` to its model family: the Flax module and its weight table."""

from __future__ import annotations

import dataclasses

from models.config import ModelConfig
from models.llama import LLAMA_WEIGHTS, CausalLM
from models.weight_table import WeightTable
from ops.attention import get_backend
from ops.head_sharded_attention import HeadSharding


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """The module that runs a family's checkpoints and the table that names its weights."""

    module: type[CausalLM]
    weights: WeightTable  # every parameter the module creates, under all its names


LLAMA = ModelFamily(CausalLM, LLAMA_WEIGHTS)
SUPPORTED_ARCHITECTURES: dict[str, ModelFamily] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": LLAMA,
    "Qwen3ForCausalLM": LLAMA,
}


def model_family(architecture: str) -> ModelFamily:
    family = SUPPORTED_ARCHITECTURES.get(architecture)
    if family is None:
        raise ValueError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    return family


def build_model(
    config: ModelConfig, attention_backend: str = "reference", heads: HeadSharding | None = None
) -> CausalLM:
    """The module for ``config``, attending with the named backend (per head shard when ``heads``)."""
    return model_family(config.architecture).module(config, get_backend(attention_backend, heads))
