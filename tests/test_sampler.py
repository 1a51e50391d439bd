"""Statistical and exact checks of the on-device sampler, on hand-made logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.sampler import SamplerMode, SamplingTensors, apply_bias_and_penalties, sample

VOCAB = 32


def _tensors(rows: int, **fields: np.ndarray) -> SamplingTensors:
    base = dict(
        temperature=np.ones(rows, np.float32), top_p=np.ones(rows, np.float32),
        top_k=np.zeros(rows, np.int32), min_p=np.zeros(rows, np.float32),
        presence_penalty=np.zeros(rows, np.float32), frequency_penalty=np.zeros(rows, np.float32),
        repetition_penalty=np.ones(rows, np.float32), seeds=np.arange(rows, dtype=np.uint32),
        counters=np.zeros(rows, np.int32), bias_ids=np.full((rows, 0), -1, np.int32),
        bias_values=np.zeros((rows, 0), np.float32), history=np.full((rows, 0), -1, np.int32),
        history_is_output=np.zeros((rows, 0), bool),
    )
    base.update(fields)
    return SamplingTensors(**base)


def _draw(logits: np.ndarray, rows: int, mode: SamplerMode, **fields: np.ndarray) -> np.ndarray:
    """Samples ``rows`` independent draws of the same logits (different seeds)."""
    t = _tensors(rows, **fields)
    tokens, _ = jax.jit(sample, static_argnames="mode")(jnp.tile(logits, (rows, 1)), t, mode=mode)
    return np.asarray(tokens)


LOGITS = np.linspace(2.0, -2.0, VOCAB).astype(np.float32)  # token 0 most likely
FILTERED = SamplerMode(all_greedy=False, use_filters=True, num_logprobs=0)
PLAIN = SamplerMode(all_greedy=False, use_filters=False, num_logprobs=0)


def test_top_k_restricts_support() -> None:
    draws = _draw(LOGITS, 2000, FILTERED, top_k=np.full(2000, 3, np.int32))
    assert set(draws) == {0, 1, 2}


def test_top_p_restricts_support_to_nucleus() -> None:
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum()
    nucleus = int(np.searchsorted(np.cumsum(probs), 0.5) + 1)
    draws = _draw(LOGITS, 2000, FILTERED, top_p=np.full(2000, 0.5, np.float32))
    assert set(draws) <= set(range(nucleus)) and len(set(draws)) == nucleus


def test_min_p_restricts_support() -> None:
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum()
    allowed = set(np.nonzero(probs >= 0.5 * probs.max())[0])
    draws = _draw(LOGITS, 2000, FILTERED, min_p=np.full(2000, 0.5, np.float32))
    assert set(draws) == allowed


def test_temperature_sampling_matches_distribution() -> None:
    rows = 8000
    draws = _draw(LOGITS, rows, PLAIN, temperature=np.full(rows, 2.0, np.float32))
    expected = np.exp(LOGITS / 2) / np.exp(LOGITS / 2).sum()
    observed = np.bincount(draws, minlength=VOCAB) / rows
    assert np.abs(observed - expected).max() < 0.02


def test_same_seed_and_counter_reproduce_whatever_the_batch() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, VOCAB)).astype(np.float32)
    t = _tensors(4, seeds=np.array([7, 7, 9, 7], np.uint32), counters=np.array([3, 3, 3, 4], np.int32))
    tokens, _ = sample(jnp.asarray(np.stack([logits[0]] * 4)), t, PLAIN)
    tokens = np.asarray(tokens)
    assert tokens[0] == tokens[1]
    alone, _ = sample(jnp.asarray(logits[:1] * 0 + logits[0]), _tensors(1, seeds=np.array([7], np.uint32),
                                                                         counters=np.array([3], np.int32)), PLAIN)
    assert int(alone[0]) == tokens[0]


def test_greedy_rows_in_a_sampled_batch_are_argmax() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, VOCAB)).astype(np.float32)
    temps = np.array([0, 1, 0, 1, 0, 1], np.float32)
    tokens, _ = sample(jnp.asarray(logits), _tensors(6, temperature=temps), PLAIN)
    greedy_rows = temps == 0
    assert (np.asarray(tokens)[greedy_rows] == logits.argmax(-1)[greedy_rows]).all()


def test_penalties_follow_their_definitions() -> None:
    logits = np.array([[2.0, -1.0, 0.5, 1.0]], np.float32)
    history = np.array([[0, 1, 2, 2]], np.int32)  # prompt: token 0; output: 1, 2, 2
    is_output = np.array([[False, True, True, True]])
    t = _tensors(1, presence_penalty=np.array([0.5], np.float32), frequency_penalty=np.array([0.25], np.float32),
                 repetition_penalty=np.array([2.0], np.float32), history=history, history_is_output=is_output)
    out = np.asarray(apply_bias_and_penalties(jnp.asarray(logits), t))[0]
    # token 0: prompt only -> repetition only: 2 / 2
    # token 1: once in output: -1 * 2 - 0.25 - 0.5 ; token 2: twice: 0.5 / 2 - 0.5 - 0.5 ; token 3 untouched
    np.testing.assert_allclose(out, [1.0, -2.75, -0.75, 1.0], rtol=1e-6)


def test_logit_bias_and_eos_suppression() -> None:
    logits = np.zeros((1, VOCAB), np.float32)
    t = _tensors(1, temperature=np.zeros(1, np.float32), bias_ids=np.array([[5, 0]], np.int32),
                 bias_values=np.array([[3.0, -np.inf]], np.float32))
    tokens, _ = sample(jnp.asarray(logits), t, SamplerMode(True, False, 0))
    assert int(tokens[0]) == 5


def test_logprobs_are_raw_and_ranked() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, VOCAB)).astype(np.float32)
    tokens, (chosen, rank, top_values, top_ids) = sample(
        jnp.asarray(logits), _tensors(3, temperature=np.zeros(3, np.float32)), SamplerMode(True, False, 5)
    )
    ref = jax.nn.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(np.asarray(chosen), np.asarray(ref).max(-1), rtol=1e-5)
    assert (np.asarray(rank) == 1).all()
    assert (np.asarray(top_ids)[:, 0] == logits.argmax(-1)).all()
    assert (np.diff(np.asarray(top_values), axis=-1) <= 0).all()


@pytest.mark.parametrize("mode", [SamplerMode(False, True, 3), SamplerMode(False, True, 3, gated=True)],
                         ids=["static", "gated"])
def test_token_mask_decides_greedy_and_sampled_rows(mode: SamplerMode) -> None:
    """Random masks: every token drawn is allowed; a greedy row takes the best allowed token
    (numpy reference); an all-ones row is unchanged; logprobs stay those of the raw logits."""
    from engine.structured_output import pack_bitmask

    rng = np.random.default_rng(3)
    rows, vocab = 64, 100  # 100 tokens: the last of 4 words is partly padding
    logits = rng.normal(size=(rows, vocab)).astype(np.float32) * 3
    allowed = rng.random((rows, vocab)) < rng.uniform(0.02, 0.5, size=(rows, 1))
    allowed[np.arange(rows), rng.integers(0, vocab, rows)] = True  # at least one token per row
    allowed[-1] = True  # an unconstrained row rides along
    temperature = np.where(np.arange(rows) % 2 == 0, 0.0, 1.0).astype(np.float32)
    t = _tensors(rows, temperature=temperature, top_k=np.where(np.arange(rows) % 4 == 1, 5, 0).astype(np.int32),
                 wants_logprobs=np.ones(rows, bool))
    run = jax.jit(sample, static_argnames="mode")
    tokens, (chosen, _, _, _) = run(jnp.asarray(logits), t, mode=mode, token_mask=jnp.asarray(pack_bitmask(allowed)))
    tokens = np.asarray(tokens)
    assert allowed[np.arange(rows), tokens].all()
    greedy = temperature == 0
    best_allowed = np.where(allowed, logits, -np.inf).argmax(-1)
    assert (tokens[greedy] == best_allowed[greedy]).all()
    raw = np.asarray(jax.nn.log_softmax(logits, axis=-1))[np.arange(rows), tokens]
    np.testing.assert_allclose(np.asarray(chosen), raw, rtol=1e-5)
    unmasked, _ = run(jnp.asarray(logits), t, mode=mode, token_mask=jnp.full((rows, 4), -1, jnp.int32))
    assert (np.asarray(unmasked)[greedy] == logits.argmax(-1)[greedy]).all()


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(max_tokens=0),
                                 dict(top_k=-3), dict(min_p=2.0), dict(n=0), dict(logprobs=50),
                                 dict(presence_penalty=3.0), dict(min_tokens=5, max_tokens=2)])
def test_invalid_sampling_params_name_the_field(bad: dict) -> None:
    from engine import SamplingParams

    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
