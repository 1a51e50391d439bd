"""Structured outputs: constraints (JSON schema, any JSON object, regex, choice, grammar) compiled to
token automata, per-request matchers, and the packed bitmasks the sampler applies.

See docs/structured_outputs.md for the backend choice and its measured costs. Each name below is
imported when first used, so a request's ``StructuredOutputSpec`` does not load llguidance or JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.structured_output.bitmask import (
        allocate_bitmask,
        apply_bitmask,
        apply_bitmask_np,
        bitmask_words,
        pack_bitmask,
        unpack_bitmask,
    )
    from engine.structured_output.grammar_compiler import CompiledGrammar, GrammarCompiler
    from engine.structured_output.matcher import GrammarMatcher, fill_bitmasks, step_bitmask
    from engine.structured_output.spec import StructuredOutputError, StructuredOutputSpec

_EXPORTS = {
    "CompiledGrammar": "engine.structured_output.grammar_compiler",
    "GrammarCompiler": "engine.structured_output.grammar_compiler",
    "GrammarMatcher": "engine.structured_output.matcher",
    "StructuredOutputError": "engine.structured_output.spec",
    "StructuredOutputSpec": "engine.structured_output.spec",
    "allocate_bitmask": "engine.structured_output.bitmask",
    "apply_bitmask": "engine.structured_output.bitmask",
    "apply_bitmask_np": "engine.structured_output.bitmask",
    "bitmask_words": "engine.structured_output.bitmask",
    "fill_bitmasks": "engine.structured_output.matcher",
    "pack_bitmask": "engine.structured_output.bitmask",
    "step_bitmask": "engine.structured_output.matcher",
    "unpack_bitmask": "engine.structured_output.bitmask",
}
__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "StructuredOutputError",
    "StructuredOutputSpec",
    "allocate_bitmask",
    "apply_bitmask",
    "apply_bitmask_np",
    "bitmask_words",
    "fill_bitmasks",
    "pack_bitmask",
    "step_bitmask",
    "unpack_bitmask",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
