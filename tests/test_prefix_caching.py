"""Prefix caching and KV block sharing: same outputs with and without, copy-on-write, eviction."""

from __future__ import annotations

import numpy as np
import pytest

from engine import SamplingParams
from tests.tiny_models import run_to_completion, tiny_engine

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
BLOCK = 16


def _workload() -> list[list[int]]:
    """Prompts sharing prefixes that end on, just before and just after block boundaries."""
    rng = np.random.default_rng(0)
    system = [int(t) for t in rng.integers(1, 256, size=3 * BLOCK + 5)]
    prompts = []
    for cut in (BLOCK, 2 * BLOCK, 2 * BLOCK - 1, 2 * BLOCK + 1, 3 * BLOCK + 5):
        for _ in range(2):
            prompts.append(system[:cut] + [int(t) for t in rng.integers(1, 256, size=int(rng.integers(1, 9)))])
    prompts.append(system[: 2 * BLOCK])  # a prompt that is exactly a cached prefix
    prompts.append(system[: 2 * BLOCK])
    prompts += [[int(t) for t in rng.integers(1, 256, size=20)] for _ in range(3)]  # unshared
    return prompts


def _run_in_waves(engine, prompts: list[list[int]], wave: int = 3) -> list[list[int]]:
    """Submits a few at a time so later requests find earlier ones' blocks cached (or freed)."""
    outputs = {}
    for start in range(0, len(prompts), wave):
        for i in range(start, min(start + wave, len(prompts))):
            engine.add_request(str(i), prompts[i], GREEDY)
        outputs.update(run_to_completion(engine))
    return [outputs[str(i)].outputs[0].token_ids for i in range(len(prompts))], outputs


@pytest.fixture(scope="module")
def without_caching() -> list[list[int]]:
    tokens, _ = _run_in_waves(tiny_engine(enable_prefix_caching=False), _workload())
    return tokens


def test_same_outputs_with_prefix_caching(without_caching) -> None:
    engine = tiny_engine(max_num_batched_tokens=64)
    tokens, outputs = _run_in_waves(engine, _workload())
    assert tokens == without_caching
    stats = engine.stats()
    assert stats.prefix_cache_hits > 0 and stats.prefix_cache_hits < stats.prefix_cache_queries
    assert any(out.num_cached_tokens > 0 for out in outputs.values())
    assert stats.num_free_blocks == stats.num_blocks


def test_eviction_under_tiny_budget_keeps_serving(without_caching) -> None:
    engine = tiny_engine(num_gpu_blocks_override=12, max_num_batched_tokens=32)
    tokens, _ = _run_in_waves(engine, _workload(), wave=2)
    assert tokens == without_caching
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


def test_exact_prefix_reuse_reports_cached_tokens() -> None:
    engine = tiny_engine()
    prompt = list(range(1, 2 * BLOCK + 3))
    engine.add_request("a", prompt, GREEDY)
    first = run_to_completion(engine)["a"]
    engine.add_request("b", prompt, GREEDY)
    second = run_to_completion(engine)["b"]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 2 * BLOCK
    assert second.outputs[0].token_ids == first.outputs[0].token_ids


@pytest.mark.parametrize("prompt_len", [2 * BLOCK + 5, 2 * BLOCK], ids=["partial-last-block", "aligned"])
def test_parallel_samples_share_prompt_and_copy_on_write(prompt_len: int) -> None:
    prompt = [int(t) for t in np.random.default_rng(3).integers(1, 256, size=prompt_len)]
    sampled = dict(temperature=1.0, max_tokens=8, ignore_eos=True)
    engine = tiny_engine(enable_prefix_caching=False)
    engine.add_request("n4", prompt, SamplingParams(n=4, seed=100, **sampled))
    together = run_to_completion(engine)["n4"]
    copies = engine.block_manager.num_copies
    # Sample i draws with seed 100 + i: each must equal a lone request with that seed.
    alone = []
    for i in range(4):
        engine.add_request(f"s{i}", prompt, SamplingParams(seed=100 + i, **sampled))
        alone.append(run_to_completion(engine)[f"s{i}"].outputs[0].token_ids)
    assert [o.token_ids for o in together.outputs] == alone
    assert len({tuple(t) for t in alone}) > 1  # the samples diverge
    # Only a partially filled last prompt block is written by every sample: the first three
    # writers each get a private copy, the last one writes the original in place.
    assert copies == (3 if prompt_len % BLOCK else 0)
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks
