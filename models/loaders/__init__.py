"""Checkpoint sources: HF directories (safetensors), GGUF files, dummy weights, orbax caches."""

from models.loaders.load import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
