"""Property: any SamplingParams either validates and runs through the engine, or is refused with
ValueError up front. Nothing a caller puts in a field may make a later step raise (issue #17:
an int32 overflow in a step used to kill the server's engine thread)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import SamplingParams
from engine import request_limits as lim
from tests.tiny_models import run_to_completion, tiny_engine

VOCAB = 256  # tests/tiny_models.py
HOSTILE_INTS = st.sampled_from([-(2**70), -(2**31) - 1, -2, -1, 2**31, 2**40, 2**64, VOCAB, VOCAB - 1])
HOSTILE_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1e30, 1e30, 1e-40, -0.0])
JUNK = st.sampled_from([None, "1", [1], {"a": 1}, True, 1.5, b"x"])
HASHABLE_JUNK = st.sampled_from([None, "1", True, 1.5, b"x"])  # junk that can be a dict key


def _mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One value in eight hostile, so that a good share of whole parameter sets is valid and runs."""
    return st.integers(0, 7).flatmap(lambda roll: hostile if roll == 0 else valid)


def _int(low: int, high: int) -> st.SearchStrategy[Any]:
    return _mostly(st.integers(low, high), st.one_of(HOSTILE_INTS, JUNK))


def _float(low: float, high: float) -> st.SearchStrategy[Any]:
    return _mostly(st.floats(low, high, allow_nan=False), st.one_of(HOSTILE_FLOATS, JUNK))


FIELDS = {
    "n": _int(1, 3),
    "temperature": _float(0.0, 2.0),
    "top_p": _float(0.0, 1.0),
    "top_k": _int(-1, 300),
    "min_p": _float(0.0, 1.0),
    "seed": st.one_of(st.none(), _mostly(st.integers(-(2**63), 2**63 - 1), HOSTILE_INTS)),
    "presence_penalty": _float(-2.0, 2.0),
    "frequency_penalty": _float(-2.0, 2.0),
    "repetition_penalty": _float(0.01, 3.0),
    "logit_bias": st.one_of(st.none(), _mostly(st.dictionaries(
        _mostly(st.integers(0, VOCAB - 1), st.one_of(HOSTILE_INTS, HASHABLE_JUNK)), _float(-100, 100), max_size=4),
                                               JUNK)),
    "max_tokens": _int(1, 3),
    "min_tokens": _int(0, 3),
    "stop": st.one_of(st.none(), _mostly(st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
                                         JUNK)),
    "stop_token_ids": st.one_of(st.none(), _mostly(st.lists(_int(0, VOCAB - 1), max_size=2), JUNK)),
    "ignore_eos": _mostly(st.booleans(), JUNK),
    "logprobs": st.one_of(st.none(), _int(0, 1)),  # (each logprob width is a compiled variant: keep few)
    "prompt_logprobs": st.one_of(st.none(), _int(0, 1)),
    # vLLM's dict form; the tiny engine has no tokenizer, so it refuses even a valid one at admission
    "structured_outputs": st.one_of(st.none(), _mostly(
        st.sampled_from([{"choice": ["a", "b"]}, {"regex": "[ab]+"}, {"json_object": True}]),
        st.one_of(JUNK, st.dictionaries(st.sampled_from(["regex", "choice", "json", "x"]), JUNK, max_size=2)))),
}

_ids = itertools.count()


@pytest.fixture(scope="module")
def engine() -> Any:
    return tiny_engine(max_model_len=64)


PARAM_SETS = st.fixed_dictionaries({}, optional=FIELDS)


@settings(max_examples=300, deadline=None)
@given(PARAM_SETS)
def test_random_params_validate_or_raise_value_error(fields: dict[str, Any]) -> None:
    try:
        params = SamplingParams(**fields)
    except ValueError as err:
        assert str(err).split(" ", 1)[0] in FIELDS  # the message names the field first
        return
    params.validate(vocab_size=VOCAB + 10**6)  # a valid object stays valid


# Few examples: each new mix of sampler features is a new compiled step (seconds on a CPU).
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(PARAM_SETS, min_size=4, max_size=8))
def test_accepted_params_run_together_without_failing_a_step(engine: Any, batch: list[dict[str, Any]]) -> None:
    """Whatever the engine accepts runs: mixed in one batch, every step succeeds and every request ends."""
    admitted: dict[str, SamplingParams] = {}
    for fields in batch:
        request_id = f"fuzz-{next(_ids)}"
        try:
            params = SamplingParams(**{"max_tokens": 2, **fields})  # short unless max_tokens is drawn
            engine.add_request(request_id, [1, 2, 3], params)
        except ValueError:
            continue
        admitted[request_id] = params
    done = run_to_completion(engine)  # must not raise
    assert set(done) == set(admitted)
    for request_id, params in admitted.items():
        outputs = done[request_id].outputs
        assert len(outputs) == params.n and all(o.finish_reason is not None for o in outputs)
        assert all(0 <= t < VOCAB for o in outputs for t in o.token_ids)
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


def test_validate_checks_ids_against_the_vocabulary() -> None:
    params = SamplingParams(stop_token_ids=[300], logit_bias={5: 1.0})
    params.validate()
    with pytest.raises(ValueError, match="^stop_token_ids"):
        params.validate(vocab_size=VOCAB)
    with pytest.raises(ValueError, match="^logit_bias"):
        SamplingParams(logit_bias={VOCAB: 1.0}).validate(vocab_size=VOCAB)


@pytest.mark.parametrize("field, value", [
    ("n", lim.MAX_N + 1), ("top_k", lim.INT32_MAX + 1), ("max_tokens", lim.INT32_MAX + 1),
    ("logprobs", lim.MAX_LOGPROBS + 1), ("stop", ["x"] * (lim.MAX_STOP_STRINGS + 1)),
    ("stop_token_ids", [1] * (lim.MAX_STOP_TOKEN_IDS + 1)), ("temperature", float("nan")),
    ("repetition_penalty", float("inf")), ("seed", 2**64),
])
def test_each_limit_is_enforced(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        SamplingParams(**{field: value})
