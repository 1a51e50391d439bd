"""Bad input is a ValueError naming the problem, and never disturbs the engine."""

from __future__ import annotations

import pytest

from engine import SamplingParams
from tests.tiny_models import run_to_completion, tiny_engine


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


GOOD = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([7] * 600, GOOD, "maximum context length is 512 tokens"),
        ([1, 2, 3], SamplingParams(max_tokens=510), "maximum context length"),
        ([], GOOD, "prompt is empty"),
        ([1, 999], GOOD, "out of range"),
        ("text needs a tokenizer", GOOD, "without a tokenizer"),
        ([1, 2], SamplingParams(logit_bias={10_000: 1.0}), "logit_bias"),
    ],
    ids=["too-long", "too-long-with-completion", "empty", "bad-token", "no-tokenizer", "bad-bias"],
)
def test_bad_requests_raise_and_engine_keeps_serving(engine, prompt, params, message) -> None:
    engine.add_request("good", [5, 6, 7], GOOD)
    with pytest.raises(ValueError, match=message):
        engine.add_request("bad", prompt, params)
    done = run_to_completion(engine)
    assert list(done) == ["good"] and len(done["good"].outputs[0].token_ids) == 4
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


def test_duplicate_request_id(engine) -> None:
    engine.add_request("dup", [1, 2], GOOD)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", [3, 4], GOOD)
    run_to_completion(engine)


def test_abort_frees_blocks_and_others_finish(engine) -> None:
    engine.add_request("keep", [1, 2, 3], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    engine.add_request("drop", [9] * 60, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.abort_request("drop")
    assert not engine.abort_request("drop")
    done = run_to_completion(engine)
    assert list(done) == ["keep"]
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


def test_unknown_sampling_parameter() -> None:
    with pytest.raises(ValueError, match="unknown sampling parameter.*bogus"):
        SamplingParams.from_dict({"temperature": 0.5, "bogus": 1})


def test_unknown_llm_argument() -> None:
    from engine import LLM

    with pytest.raises(ValueError, match="unknown LLM argument.*max_num_sequences"):
        LLM(max_num_sequences=4)


def test_n_samples_and_seeds() -> None:
    engine = tiny_engine()
    params = SamplingParams(n=3, temperature=1.0, seed=42, max_tokens=8, ignore_eos=True)
    engine.add_request("a", [1, 2, 3, 4], params)
    first = run_to_completion(engine)["a"]
    engine.add_request("b", [1, 2, 3, 4], params)
    engine.add_request("noise", [9, 8, 7], SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True))
    second = run_to_completion(engine)["b"]
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in second.outputs]
    assert len({tuple(o.token_ids) for o in first.outputs}) > 1
    assert [o.index for o in first.outputs] == [0, 1, 2]


def test_min_tokens_and_stop_token_ids() -> None:
    engine = tiny_engine()
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    engine.add_request("free", [3, 1, 4, 1, 5], greedy)
    tokens = run_to_completion(engine)["free"].outputs[0].token_ids
    stop_at = tokens[2]
    first_index = tokens.index(stop_at)
    engine.add_request("stop", [3, 1, 4, 1, 5],
                       SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_at]))
    out = run_to_completion(engine)["stop"].outputs[0]
    assert out.token_ids == tokens[: first_index + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at
    engine.add_request("min", [3, 1, 4, 1, 5], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_at],
                                                               min_tokens=first_index + 2))
    out = run_to_completion(engine)["min"].outputs[0]
    assert stop_at not in out.token_ids[: first_index + 2]
    assert len(out.token_ids) >= first_index + 2
