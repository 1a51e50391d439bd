"""Continuous batching must not change greedy results: batched == one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from engine import SamplingParams
from tests.tiny_models import run_to_completion, tiny_config, tiny_engine

PROMPT_LENGTHS = [1, 5, 15, 16, 17, 33, 64, 90]


def _prompts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, 256, size=n)] for n in PROMPT_LENGTHS]


def _one_at_a_time(prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    engine = tiny_engine(max_num_seqs=1)
    outs = []
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
        outs.append(run_to_completion(engine)[str(i)].outputs[0].token_ids)
    return outs


@pytest.fixture(scope="module")
def expected() -> list[list[int]]:
    return _one_at_a_time(_prompts(), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        dict(),  # everything in one step
        dict(max_num_batched_tokens=32),  # chunked prefill, mixed with decodes
        dict(enable_chunked_prefill=False, max_num_batched_tokens=512),
        dict(num_gpu_blocks_override=14, max_num_batched_tokens=48),  # forces preemption
    ],
    ids=["one-step", "chunked", "no-chunking", "preemption"],
)
def test_batched_equals_sequential(expected: list[list[int]], engine_kwargs: dict) -> None:
    engine = tiny_engine(**engine_kwargs)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    for i, prompt in enumerate(_prompts()):
        engine.add_request(str(i), prompt, params)
    done = run_to_completion(engine)
    assert [done[str(i)].outputs[0].token_ids for i in range(len(PROMPT_LENGTHS))] == expected
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks
    if engine_kwargs.get("num_gpu_blocks_override") == 14:
        assert stats.num_preemptions > 0


def test_requests_joining_mid_flight_match() -> None:
    """A request added while others decode gets the same tokens as alone."""
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = _prompts(1)[:4]
    alone = _one_at_a_time(prompts, params)
    engine = tiny_engine(max_num_batched_tokens=32)
    engine.add_request("0", prompts[0], params)
    engine.add_request("1", prompts[1], params)
    done = {}
    for step in range(200):
        if step == 3:
            engine.add_request("2", prompts[2], params)
        if step == 5:
            engine.add_request("3", prompts[3], params)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        if len(done) == 4:
            break
    assert [done[str(i)] for i in range(4)] == alone


@pytest.mark.parametrize(
    "config_overrides",
    [
        dict(architecture="Qwen2ForCausalLM", attention_bias=True, tie_word_embeddings=True),
        dict(architecture="Qwen3ForCausalLM", qk_norm=True, num_kv_heads=1),
        dict(architecture="MistralForCausalLM", sliding_window=8),
    ],
    ids=["qwen2", "qwen3", "mistral-window"],
)
def test_families_batched_equals_sequential(config_overrides: dict) -> None:
    config = tiny_config(**config_overrides)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompts = _prompts(2)[2:6]
    solo = tiny_engine(config, max_num_seqs=1)
    alone = []
    for i, prompt in enumerate(prompts):
        solo.add_request(str(i), prompt, params)
        alone.append(run_to_completion(solo)[str(i)].outputs[0].token_ids)
    batched = tiny_engine(config, max_num_batched_tokens=32)
    for i, prompt in enumerate(prompts):
        batched.add_request(str(i), prompt, params)
    done = run_to_completion(batched)
    assert [done[str(i)].outputs[0].token_ids for i in range(len(prompts))] == alone


def test_no_recompilation_for_repeated_shapes() -> None:
    engine = tiny_engine()
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    engine.add_request("warm", [1, 2, 3], params)
    run_to_completion(engine)
    before = engine.stats().num_compilations
    engine.add_request("again", [4, 5, 6], params)
    run_to_completion(engine)
    assert engine.stats().num_compilations == before
