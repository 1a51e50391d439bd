"""The overlap (async scheduling) must not change a single token: the same workload with it on
and off gives identical outputs, greedy and seeded alike, and leaves no block behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine import LLMEngine, SamplingParams

SHARED = list(range(1000, 1040))  # a 40-token prefix (2.5 blocks of 16) several requests share


def _prompt(seed: int, length: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % 30000 + 100 for i in range(length)]


def _drive(engine: LLMEngine, arrivals: dict[int, list[tuple[str, list[int], SamplingParams]]],
           aborts: dict[int, str]) -> dict[str, Any]:
    """Adds requests and aborts at given step numbers; returns each finished request's output."""
    done: dict[str, Any] = {}
    for step in range(2000):
        for request_id, prompt, params in arrivals.get(step, []):
            engine.add_request(request_id, prompt, params)
        if step in aborts:
            engine.abort_request(aborts[step])
        if step > max(arrivals) and not engine.has_unfinished_requests():
            break
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert not engine.has_unfinished_requests()
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks, "a KV block leaked"
    return done


def _summary(done: dict[str, Any]) -> dict[str, list[tuple[list[int], str, str | None]]]:
    return {rid: [(c.token_ids, c.text, c.finish_reason) for c in out.outputs] for rid, out in done.items()}


def _mixed_workload(stop_text: str, stop_token: int) -> tuple[dict, dict]:
    greedy = dict(temperature=0.0, ignore_eos=True)
    arrivals = {
        0: [("long", _prompt(1, 30), SamplingParams(max_tokens=14, **greedy)),
            ("one", _prompt(2, 9), SamplingParams(max_tokens=1, **greedy)),
            ("stop-str", _prompt(3, 12), SamplingParams(max_tokens=16, stop=[stop_text], **greedy)),
            ("aborted", _prompt(4, 20), SamplingParams(max_tokens=30, **greedy))],
        2: [("pair", SHARED + _prompt(5, 6), SamplingParams(max_tokens=7, n=2, temperature=0.9, seed=11,
                                                            ignore_eos=True)),
            ("stop-id", _prompt(6, 17), SamplingParams(max_tokens=16, stop_token_ids=[stop_token], **greedy))],
        5: [("prefix-hit", SHARED + _prompt(7, 3), SamplingParams(max_tokens=6, **greedy)),
            ("penalised", _prompt(8, 11), SamplingParams(max_tokens=9, temperature=0.8, seed=5, top_k=40,
                                                         presence_penalty=0.5, repetition_penalty=1.3,
                                                         min_tokens=3, ignore_eos=True))],
    }
    return arrivals, {4: "aborted"}


@pytest.fixture(scope="module")
def probe(make_tiny_engine: Callable[..., LLMEngine]) -> tuple[str, int]:
    """A stop string and a stop id that really occur mid-output (chosen from an unstopped run)."""
    engine = make_tiny_engine(async_scheduling=False)
    done = _drive(engine, {0: [("a", _prompt(3, 12), SamplingParams(max_tokens=16, temperature=0.0,
                                                                     ignore_eos=True)),
                               ("b", _prompt(6, 17), SamplingParams(max_tokens=16, temperature=0.0,
                                                                    ignore_eos=True))]}, {})
    text = done["a"].outputs[0].text
    stop_text = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop_text.strip(), "the probe run gave no usable text"
    return stop_text, done["b"].outputs[0].token_ids[6]


def test_mixed_workload_is_identical_with_and_without_overlap(
    make_tiny_engine: Callable[..., LLMEngine], probe: tuple[str, int]
) -> None:
    arrivals, aborts = _mixed_workload(*probe)
    results = {}
    for overlap in (False, True):
        engine = make_tiny_engine(async_scheduling=overlap)
        results[overlap] = _summary(_drive(engine, arrivals, aborts))
        assert engine.stats().prefix_cache_hits > 0
    assert "aborted" not in results[True]
    assert results[True] == results[False]
    reasons = {rid: [r for _, _, r in outs] for rid, outs in results[True].items()}
    assert reasons["stop-str"] == ["stop"] and reasons["stop-id"] == ["stop"]
    assert reasons["one"] == ["length"] and len(results[True]["one"][0][0]) == 1
    assert len(results[True]["pair"]) == 2


def test_preemption_under_a_tiny_kv_budget_is_identical(make_tiny_engine: Callable[..., LLMEngine]) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    arrivals = {0: [(f"r{i}", _prompt(20 + i, 40), params) for i in range(4)],
                1: [("late", _prompt(30, 25), SamplingParams(max_tokens=20, temperature=0.7, seed=3,
                                                              ignore_eos=True))]}
    results = {}
    for overlap in (False, True):
        engine = make_tiny_engine(async_scheduling=overlap, num_gpu_blocks_override=12, max_num_seqs=4)
        results[overlap] = _summary(_drive(engine, arrivals, {}))
        assert engine.stats().num_preemptions > 0
    assert results[True] == results[False]
