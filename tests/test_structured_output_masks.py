"""The grammar masks against a plain-Python oracle, on random finite automata over a tiny vocabulary,
and the packed-bitmask helpers (numpy reference vs the jitted ``apply_bitmask``)."""

from __future__ import annotations

import random
import re

import jax
import numpy as np
import pytest

from engine.structured_output import (
    GrammarCompiler,
    StructuredOutputSpec,
    allocate_bitmask,
    apply_bitmask,
    apply_bitmask_np,
    bitmask_words,
    fill_bitmasks,
    pack_bitmask,
    step_bitmask,
    unpack_bitmask,
)
from engine.structured_output.regex_budget import repetition_size
from tests.tiny_grammar_vocab import ALPHABET, EOS, TOKENS, tiny_grammar_compiler


@pytest.fixture(scope="module")
def tiny_compiler() -> GrammarCompiler:
    return tiny_grammar_compiler()


def _random_regex(rng: random.Random, depth: int = 0) -> tuple[str, set[str]]:
    """A random regex with a finite language, and that language enumerated in plain Python."""
    kind = rng.choice(["lit", "lit", "cat", "alt", "opt", "rep"] if depth < 3 else ["lit"])
    if kind == "lit":
        word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 3)))
        return word, {word}
    left, lang_l = _random_regex(rng, depth + 1)
    if kind in ("cat", "alt"):
        right, lang_r = _random_regex(rng, depth + 1)
        if kind == "cat":
            return f"(?:{left})(?:{right})", {x + y for x in lang_l for y in lang_r}
        return f"(?:{left}|{right})", lang_l | lang_r
    if kind == "opt":
        return f"(?:{left})?", lang_l | {""}
    lang = {""}
    for _ in range(2):
        lang |= {x + y for x in lang for y in lang_l}
    return f"(?:{left}){{0,2}}", lang


def _expected_allowed(prefix: bytes, language: set[bytes]) -> set[int]:
    """Token t is allowed after ``prefix`` iff prefix + t starts some word; eos iff prefix is a word."""
    allowed = {t for t in range(EOS) if any(w.startswith(prefix + TOKENS[t]) for w in language)}
    if prefix in language:
        allowed.add(EOS)
    return allowed


def _is_forced(prefix: bytes, language: set[bytes]) -> bool:
    """Exactly one possible next byte and no end here: the output is forced."""
    return prefix not in language and len({w[len(prefix)] for w in language if w.startswith(prefix)}) == 1


def _check_mask(allowed: set[int], prefix: bytes, language: set[bytes]) -> None:
    """Every allowed token keeps the output inside the language, and nothing viable is refused,
    except where bytes are forced: llguidance then allows only the tokenizer's own spelling."""
    expected = _expected_allowed(prefix, language)
    if _is_forced(prefix, language):
        assert allowed and allowed <= expected, (prefix, allowed, expected)
    else:
        assert allowed == expected, (prefix, allowed, expected)


def _walk_and_check(compiler: GrammarCompiler, spec: StructuredOutputSpec, language: set[bytes],
                    rng: random.Random) -> None:
    matcher = compiler.matcher(spec)
    prefix, history = b"", []
    while True:
        allowed = set(matcher.allowed_token_ids().tolist())
        _check_mask(allowed, prefix, language)
        assert matcher.is_terminated == (allowed == {EOS})
        token = rng.choice(sorted(allowed))
        if token == EOS:
            assert matcher.is_accepting
            return
        history.append((prefix, allowed))
        assert matcher.accept_token(token)
        prefix += TOKENS[token]
        if rng.random() < 0.3:  # roll back some tokens: the mask there must be what it was
            back = rng.randint(1, len(history))
            matcher.rollback(back)
            prefix, allowed = history[-back]
            del history[-back:]
            assert set(matcher.allowed_token_ids().tolist()) == allowed


@pytest.mark.parametrize("seed", range(40))
def test_random_regex_masks_match_oracle(tiny_compiler: GrammarCompiler, seed: int) -> None:
    rng = random.Random(seed)
    pattern, language = _random_regex(rng)
    assert all(re.fullmatch(pattern, w) for w in language)  # the oracle's language is the regex's
    _walk_and_check(tiny_compiler, StructuredOutputSpec.regex(pattern), {w.encode() for w in language}, rng)


@pytest.mark.parametrize("seed", range(20))
def test_random_choice_masks_match_oracle(tiny_compiler: GrammarCompiler, seed: int) -> None:
    rng = random.Random(1000 + seed)
    choices = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 6))]
    _walk_and_check(tiny_compiler, StructuredOutputSpec.choice(choices), {c.encode() for c in choices}, rng)


def test_batched_fill_equals_row_by_row(tiny_compiler: GrammarCompiler) -> None:
    specs = [StructuredOutputSpec.regex("(ab|c)+"), StructuredOutputSpec.choice(["abc", "cab"]),
             StructuredOutputSpec.regex("b{1,3}a")]
    matchers = [tiny_compiler.matcher(s) for s in specs]
    matchers[0].accept_token(3)
    vocab = tiny_compiler.vocab_size
    batched = allocate_bitmask(5, vocab)
    fill_bitmasks(batched, [(m, row) for m, row in zip(matchers, (4, 0, 2), strict=True)])
    for m, row in zip(matchers, (4, 0, 2), strict=True):
        single = allocate_bitmask(1, vocab)
        m.fill_bitmask(single, 0)
        np.testing.assert_array_equal(batched[row], single[0])
    assert (batched[[1, 3]] == -1).all()  # rows without a constraint keep allowing everything
    with pytest.raises(ValueError, match="own row"):
        fill_bitmasks(batched, [(matchers[0], 1), (matchers[1], 1)])
    with pytest.raises(ValueError, match="words"):
        matchers[0].fill_bitmask(allocate_bitmask(1, vocab + 64), 0)


def test_step_bitmask(tiny_compiler: GrammarCompiler) -> None:
    vocab = tiny_compiler.vocab_size
    assert step_bitmask([None, None], 4, vocab) is None  # no constraint: the step needs no mask
    choice = tiny_compiler.matcher(StructuredOutputSpec.choice(["cc"]))
    mask = step_bitmask([None, choice], 4, vocab)
    assert mask is not None and mask.shape == (4, bitmask_words(vocab))
    assert (mask[[0, 2, 3]] == -1).all()
    assert np.flatnonzero(unpack_bitmask(mask[1:2], vocab)[0]).tolist() == choice.allowed_token_ids().tolist()
    with pytest.raises(ValueError, match="rows"):
        step_bitmask([choice, None, None], 2, vocab)


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 100])
def test_pack_unpack_round_trip(vocab: int) -> None:
    allowed = np.random.default_rng(vocab).random((3, vocab)) < 0.5
    packed = pack_bitmask(allowed)
    assert packed.shape == (3, bitmask_words(vocab)) and packed.dtype == np.int32
    np.testing.assert_array_equal(unpack_bitmask(packed, vocab), allowed)


@pytest.mark.parametrize("vocab,mask_vocab", [(100, 100), (64, 64), (70, 64)])
def test_jitted_apply_bitmask_matches_reference(vocab: int, mask_vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    logits = rng.standard_normal((4, vocab)).astype(np.float32)
    allowed = rng.random((4, mask_vocab)) < 0.3
    allowed[1] = True  # an unconstrained row
    mask = pack_bitmask(allowed)
    expected = apply_bitmask_np(logits, mask)
    got = np.asarray(jax.jit(apply_bitmask)(logits, mask))
    np.testing.assert_array_equal(got, expected)
    assert np.isneginf(got[:, mask_vocab:]).all()  # ids past the mask are never allowed
    allowed_full = np.zeros((4, vocab), bool)
    allowed_full[:, :mask_vocab] = allowed
    np.testing.assert_array_equal(np.isfinite(got), allowed_full)
    # greedy over masked logits picks the best allowed token
    np.testing.assert_array_equal(got.argmax(-1), np.where(allowed_full, logits, -np.inf).argmax(-1))


@pytest.mark.parametrize("pattern,size", [
    ("abc", 3), (r"\d{4}-\d{2}", 7), ("(a{10}){20}", 200), ("[a-z]{1,50}", 50), ("[]x]{3}", 3),
    ("(a{100}){100}(b{10}){10}", 10100), (r"\{9999\}", 6), ("a+b*", 2), ("(ab|cd)?", 4),
])
def test_repetition_size_bounds_counted_repetitions(pattern: str, size: int) -> None:
    assert repetition_size(pattern) == size
