"""Tessera's engine: ``from engine import LLM, SamplingParams``.

Importing the package loads nothing else and changes nothing: each name below is imported when
first used (``engine.LLM`` loads JAX, ``engine.SamplingParams`` does not), and process settings are
applied when an engine or server starts (engine/environment.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.llm import LLM
    from engine.llm_engine import LLMEngine
    from engine.outputs import CompletionOutput, Logprob, RequestOutput
    from engine.sampling_params import SamplingParams

_EXPORTS = {
    "CompletionOutput": "engine.outputs",
    "EngineConfig": "engine.config",
    "LLM": "engine.llm",
    "LLMEngine": "engine.llm_engine",
    "Logprob": "engine.outputs",
    "RequestOutput": "engine.outputs",
    "SamplingParams": "engine.sampling_params",
}
__all__ = ["CompletionOutput", "EngineConfig", "LLM", "LLMEngine", "Logprob", "RequestOutput", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
