"""Pure Flax decoder-only language models and their weight loaders."""

from models.config import ModelConfig
from models.registry import SUPPORTED_ARCHITECTURES, build_model

__all__ = ["ModelConfig", "SUPPORTED_ARCHITECTURES", "build_model"]
