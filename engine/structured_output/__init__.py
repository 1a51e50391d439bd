"""Structured outputs: constraints (JSON schema, any JSON object, regex, choice, grammar) compiled to
token automata, per-request matchers, and the packed bitmasks the sampler applies.

See docs/structured_outputs.md for the backend choice and its measured costs.
"""

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
