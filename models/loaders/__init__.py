"""Checkpoint sources: HF directories (safetensors), GGUF files, dummy weights, orbax caches.

``LoadedModel`` and ``load_model`` are imported when first used, so importing one loader (say
``models.loaders.gguf_loader``) does not load the others and orbax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.loaders.load import LoadedModel, load_model

_EXPORTS = {"LoadedModel": "models.loaders.load", "load_model": "models.loaders.load"}
__all__ = ["LoadedModel", "load_model"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
