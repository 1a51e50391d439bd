"""The engine's side of structured outputs: one compiler for the model, one ``SequenceGrammar``
per constrained sequence, the step's bitmask, and what each sampled token does to its sequence.

Building llguidance's index of the vocabulary takes a second or two, so it starts on a background
thread with the first constrained request (engines that never see one never pay it) and only the
compiles queued behind it wait for it (also in the background). The engine then asks, per step:
``bitmask(rows)`` for the sequences it places, and after sampling ``advance(grammar, token)``,
which says whether the sequence goes on, is complete (finish "stop"), or failed (finish "error").
``compile(spec)`` compiles in the caller's thread, for callers that want the verdict before queueing
(offline ``LLM``).
"""

from __future__ import annotations

import concurrent.futures
import enum
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.structured_output.grammar_compiler import CompiledGrammar, GrammarCompiler
from engine.structured_output.matcher import step_bitmask
from engine.structured_output.sequence_grammar import SequenceGrammar
from engine.structured_output.spec import StructuredOutputSpec


class GrammarVerdict(enum.Enum):
    CONTINUE = "continue"
    COMPLETE = "complete"  # the constraint is satisfied and nothing may follow: finish with "stop"
    FAILED = "failed"  # a refused token or a grammar that did not compile: finish with an error


class EngineGrammars:
    def __init__(self, tokenizer: Any, vocab_size: int, reasoning_end_token: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.reasoning_end_token = reasoning_end_token
        self._tokenizer = tokenizer
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar-index")
        self._compiler: concurrent.futures.Future[GrammarCompiler] | None = None

    def grammar(self, spec: StructuredOutputSpec, reasoning: bool = True) -> SequenceGrammar:
        """A new sequence's grammar state; its compile runs in the background. ``reasoning`` False:
        its prompt already ended the reasoning, so the constraint applies from the first token."""
        return SequenceGrammar(self._compile(spec), self.reasoning_end_token if reasoning else None)

    def bitmask(self, rows: Sequence[SequenceGrammar | None], num_rows: int) -> np.ndarray | None:
        """The step's [num_rows, words] mask for sequences placed in rows 0..len(rows)-1 (None:
        unconstrained); None when no row is constrained, so the step runs its unmasked variant."""
        return step_bitmask([g.step_matcher() if g is not None else None for g in rows], num_rows, self.vocab_size)

    @staticmethod
    def advance(grammar: SequenceGrammar, token_id: int) -> GrammarVerdict:
        """Feeds one sampled token to its sequence's grammar."""
        if not grammar.accept(token_id) or grammar.failure is not None:
            return GrammarVerdict.FAILED
        return GrammarVerdict.COMPLETE if grammar.is_complete else GrammarVerdict.CONTINUE

    def compile(self, spec: StructuredOutputSpec) -> CompiledGrammar:
        """``spec`` compiled (or from the cache), waiting for it here; raises ``StructuredOutputError``."""
        return self._index().result().compile(spec)

    def _index(self) -> concurrent.futures.Future[GrammarCompiler]:
        if self._compiler is None:
            self._compiler = self._pool.submit(GrammarCompiler.from_tokenizer, self._tokenizer, self.vocab_size)
        return self._compiler

    def _compile(self, spec: StructuredOutputSpec) -> concurrent.futures.Future[CompiledGrammar]:
        compiler = self._index()
        if compiler.done():
            return compiler.result().compile_async(spec)
        return self._pool.submit(lambda: compiler.result().compile(spec))
