"""A sequence's grammar state: waiting for its compile, reasoning first, completing, failing alone."""

from __future__ import annotations

import concurrent.futures

import pytest

from engine.structured_output import GrammarCompiler, StructuredOutputSpec
from engine.structured_output.sequence_grammar import SequenceGrammar
from tests.tiny_grammar_vocab import EOS, TOKENS, tiny_grammar_compiler

A, B, C, AB, CC = (TOKENS.index(t) for t in (b"a", b"b", b"c", b"ab", b"cc"))


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    return tiny_grammar_compiler()


def _compiled(compiler: GrammarCompiler, spec: StructuredOutputSpec) -> concurrent.futures.Future:
    future = compiler.compile_async(spec)
    concurrent.futures.wait([future])
    return future


def test_waits_for_its_compile_then_constrains(compiler: GrammarCompiler) -> None:
    pending: concurrent.futures.Future = concurrent.futures.Future()
    grammar = SequenceGrammar(pending)
    assert not grammar.is_ready and grammar.step_matcher() is None and grammar.failure is None
    pending.set_result(compiler.compile(StructuredOutputSpec.choice(["ab", "abc"])))
    assert grammar.is_ready
    matcher = grammar.step_matcher()
    assert matcher is not None and set(matcher.allowed_token_ids().tolist()) <= {A, AB, TOKENS.index(b"abc")}
    assert grammar.accept(AB) and not grammar.is_complete  # "ab" may end or go on to "abc"
    assert grammar.accept(C) and grammar.is_complete
    assert grammar.step_matcher().allowed_token_ids().tolist() == [EOS]


def test_compile_error_is_the_failure(compiler: GrammarCompiler) -> None:
    grammar = SequenceGrammar(_compiled(compiler, StructuredOutputSpec.regex("(?<=a)b")))
    assert grammar.is_ready and "look-around" in (grammar.failure or "")
    assert grammar.step_matcher() is None and not grammar.accept(A)


def test_refused_token_fails_the_sequence(compiler: GrammarCompiler) -> None:
    grammar = SequenceGrammar(_compiled(compiler, StructuredOutputSpec.regex("a+")))
    assert grammar.accept(A) and grammar.failure is None
    assert not grammar.accept(B)
    assert grammar.failure and grammar.step_matcher() is None


def test_reasoning_is_not_constrained(compiler: GrammarCompiler) -> None:
    grammar = SequenceGrammar(_compiled(compiler, StructuredOutputSpec.regex("ab")), reasoning_end_token=CC)
    for token in (B, B, C, A):  # thinking: anything goes, nothing is masked
        assert grammar.step_matcher() is None and grammar.accept(token)
    assert grammar.accept(CC)  # </think>
    matcher = grammar.step_matcher()
    assert matcher is not None and matcher.allowed_token_ids().tolist() == [AB]
    assert grammar.accept(AB) and grammar.is_complete
