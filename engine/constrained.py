"""Requests with an output constraint (structured outputs) on their way into the scheduler.

A constrained request is scheduled only once its grammar has compiled (llguidance, on a background
thread: ``EngineGrammars``). Until then its samples wait here, outside the scheduler, so the engine
keeps stepping other requests and never builds a step for a grammar that is not there. A grammar
already in the compiler's cache is decided at once. ``take_compiled`` hands the engine what has
finished since: scheduled, or refused with the compiler's message (a bad schema, an unsupported
regex feature), which ends that request alone; the engine core answers such a request with a 400.

After each sampled token ``grammar_finish`` says whether the constraint ends the sequence:
complete (finish reason "stop", without spending a step on end-of-sequence) or failed ("error").

A reasoning model's thinking is left free: with a reasoning end token (``</think>``) the mask starts
after that token, or at once when the prompt already holds it (a template that turned thinking off),
as vLLM decides it.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any

from engine.sequence import Sequence
from engine.structured_output import StructuredOutputError, StructuredOutputSpec
from engine.structured_output.engine_grammars import EngineGrammars, GrammarVerdict
from engine.structured_output.sequence_grammar import SequenceGrammar

logger = logging.getLogger(__name__)

PARAM = "structured_outputs"  # the SamplingParams field a refusal names


class ConstrainedRequests:
    def __init__(self, tokenizer: Any, vocab_size: int, reasoning_end: str | None = None) -> None:
        """``tokenizer`` None: a model loaded without one, which cannot take constraints.
        ``reasoning_end``: the text ending a reasoning model's thinking (one token)."""
        self.grammars = None
        if tokenizer is not None:
            self.grammars = EngineGrammars(tokenizer, vocab_size, _single_token(tokenizer, reasoning_end))
        self._compiling: dict[str, SequenceGrammar] = {}  # request id -> its first sample's grammar

    def __len__(self) -> int:
        """Requests still waiting for their grammar."""
        return len(self._compiling)

    def attach(self, request_id: str, seqs: list[Sequence], spec: StructuredOutputSpec) -> bool:
        """Gives each sample its own matcher of one compile. True: compiled already (schedule the
        request now); False: it waits here. Raises ``StructuredOutputError`` when the cache
        already knows the constraint does not compile."""
        grammars = self._grammars()
        reasoning = grammars.reasoning_end_token not in seqs[0].token_ids
        for seq in seqs:
            seq.grammar = grammars.grammar(spec, reasoning)
        first = seqs[0].grammar
        assert first is not None
        if not first.is_ready:
            self._compiling[request_id] = first
            return False
        _raise_failure(first)
        return True

    def take_compiled(self) -> list[tuple[str, str | None]]:
        """(request id, None) for each waiting request whose grammar has compiled since the last
        call, (request id, why) for each whose grammar could not."""
        done = [(rid, grammar) for rid, grammar in self._compiling.items() if grammar.is_ready]
        for request_id, _ in done:
            del self._compiling[request_id]
        return [(request_id, grammar.failure) for request_id, grammar in done]

    def forget(self, request_id: str) -> None:
        """An aborted request no longer waits."""
        self._compiling.pop(request_id, None)

    def wait(self, timeout_s: float) -> None:
        """Blocks until some waiting grammar is decided or ``timeout_s`` passes (an engine with
        nothing else to run waits here instead of spinning)."""
        futures = [grammar.compile_future for grammar in self._compiling.values()]
        if futures:
            concurrent.futures.wait(futures, timeout_s, return_when=concurrent.futures.FIRST_COMPLETED)

    def check(self, spec: StructuredOutputSpec) -> None:
        """Compiles ``spec`` now, in this thread (cached); raises ``StructuredOutputError`` naming the problem."""
        grammars = self._grammars()
        try:
            grammars.compile(spec)
        except StructuredOutputError as err:
            raise StructuredOutputError(str(err), PARAM) from None

    def _grammars(self) -> EngineGrammars:
        if self.grammars is None:
            raise StructuredOutputError("structured_outputs needs a tokenizer; this model was loaded without one",
                                        PARAM)
        return self.grammars


def grammar_finish(seq: Sequence, token: int) -> tuple[str, None] | None:
    """Feeds a sampled token to the sequence's grammar: ("stop", None) once the constraint is
    complete, ("error", None) if it refused the token, None while the output goes on."""
    assert seq.grammar is not None
    verdict = EngineGrammars.advance(seq.grammar, token)
    if verdict is GrammarVerdict.FAILED:
        logger.warning("request %s: its output constraint failed: %s", seq.request_id, seq.grammar.failure)
        return "error", None
    return ("stop", None) if verdict is GrammarVerdict.COMPLETE else None


def _single_token(tokenizer: Any, text: str | None) -> int | None:
    if text is None:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        logger.warning("%r is %d tokens of this vocabulary, not one: output constraints cover the reasoning too",
                       text, len(ids))
        return None
    return int(ids[0])


def _raise_failure(grammar: SequenceGrammar) -> None:
    if grammar.failure is not None:
        raise StructuredOutputError(grammar.failure, PARAM)
