"""One sequence's constraint through its life: compiling, constraining, complete or failed.

The engine keeps one ``SequenceGrammar`` per sequence (each of a request's ``n`` samples has its
own matcher). Compilation runs in the background (``GrammarCompiler.compile_async``); until it
is done the sequence should not be scheduled (``is_ready``). With a reasoning model the
constraint applies only to the answer: nothing is masked or matched until the token that ends
the reasoning (``</think>``) has been generated. ``failure`` is set when the grammar did not
compile or a token was refused; the engine then ends that request alone with an error.
"""

from __future__ import annotations

import concurrent.futures

from engine.structured_output.grammar_compiler import CompiledGrammar
from engine.structured_output.matcher import GrammarMatcher


class SequenceGrammar:
    def __init__(self, compiled: concurrent.futures.Future[CompiledGrammar],
                 reasoning_end_token: int | None = None) -> None:
        self._compiled = compiled
        self._matcher: GrammarMatcher | None = None
        self._compile_error: str | None = None
        self._reasoning_end_token = reasoning_end_token
        self._answer_started = reasoning_end_token is None

    @property
    def is_ready(self) -> bool:
        """Compiled (or failed to): the sequence may be scheduled."""
        return self._compiled.done()

    @property
    def compile_future(self) -> concurrent.futures.Future[CompiledGrammar]:
        """The compile this grammar waits for (to wait on it, with others)."""
        return self._compiled

    @property
    def failure(self) -> str | None:
        """Why the constraint cannot go on (a compile error, a refused token), else None."""
        matcher = self._ensure_matcher()
        if self._compile_error is not None:
            return self._compile_error
        return matcher.error if matcher is not None else None

    def step_matcher(self) -> GrammarMatcher | None:
        """The matcher whose mask the next step applies to this sequence; None: no mask (still
        compiling, still reasoning, or failed)."""
        matcher = self._ensure_matcher()
        if matcher is None or not self._answer_started or matcher.error is not None:
            return None
        return matcher

    @property
    def is_complete(self) -> bool:
        """The answer matches the constraint in full and nothing may follow: finish the sequence."""
        matcher = self.step_matcher()
        return matcher is not None and matcher.is_terminated

    def accept(self, token_id: int) -> bool:
        """Advances past a generated token; False if the constraint refused it (``failure`` says why)."""
        if not self._answer_started:
            self._answer_started = token_id == self._reasoning_end_token
            return True
        matcher = self._ensure_matcher()
        if matcher is None:
            return self._compile_error is None
        return matcher.accept_token(token_id)

    def _ensure_matcher(self) -> GrammarMatcher | None:
        if self._matcher is None and self._compile_error is None and self._compiled.done():
            error = self._compiled.exception()
            if error is not None:
                self._compile_error = str(error)
            else:
                self._matcher = self._compiled.result().matcher()
        return self._matcher
