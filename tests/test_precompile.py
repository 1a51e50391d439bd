"""Compile once: after the bucket plan is precompiled, no workload compiles anything, on the
server or offline, and a second start in the same cache directory loads instead of compiling.

The plans here are a few programs (a 64-token context, 4 sequences, 32-token steps) so that
precompiling stays a few seconds on a small CPU; tests/test_bucket_plan.py checks that larger
plans cover every step shape.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from engine import LLM, SamplingParams
from engine.compilation import cache_hit_count, compilation_count, xla_compile_count
from engine.request_limits import MAX_BIAS_ROW_ENTRIES, MAX_LOGIT_BIAS_ENTRIES

MAX_MODEL_LEN = 64
SMALL_PLAN = dict(max_model_len=MAX_MODEL_LEN, max_num_seqs=4, max_num_batched_tokens=32, num_gpu_blocks_override=64)
TINY_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
    "eos_token_id": 0,
}


def _varied_requests(rng: np.random.Generator, vocab: int) -> list[dict[str, Any]]:
    """Completions over every sampler feature, prompts of 1 .. max_model_len - 1 tokens."""
    bodies: list[dict[str, Any]] = []
    lengths = [1, 2, 15, 16, 17, 31, 33, MAX_MODEL_LEN - 9, MAX_MODEL_LEN - 2]
    features: list[dict[str, Any]] = [
        {"temperature": 0}, {"temperature": 0.8, "seed": 1}, {"temperature": 1.0, "top_k": 5},
        {"temperature": 0.7, "top_p": 0.9, "min_p": 0.05}, {"temperature": 0, "presence_penalty": 0.5},
        {"temperature": 0.5, "frequency_penalty": 0.3, "repetition_penalty": 1.2},
        {"temperature": 0, "logit_bias": {"7": 5.0, "9": -100}}, {"temperature": 0, "logprobs": 0},
        {"temperature": 0.9, "logprobs": 20}, {"temperature": 0, "echo": True, "logprobs": 3},
        {"temperature": 0.8, "n": 3}, {"temperature": 0, "stop": ["the", "a"], "min_tokens": 2},
    ]
    for i, length in enumerate(lengths * 2):
        prompt = [int(t) for t in rng.integers(1, vocab, size=length)]
        body = {"model": "tiny", "prompt": prompt, "max_tokens": int(min(8, MAX_MODEL_LEN - length)),
                **features[i % len(features)]}
        bodies.append(body)
    shared = [int(t) for t in rng.integers(1, vocab, size=40)]
    bodies += [{"model": "tiny", "prompt": shared, "max_tokens": 4, "temperature": 0}] * 2  # prefix-cache hit
    return bodies + _constrained_requests(rng, vocab)


def _constrained_requests(rng: np.random.Generator, vocab: int) -> list[dict[str, Any]]:
    """Structured outputs (the token mask rides in the planned sampling variants), greedy and
    sampled, alone and batched with the rest."""
    constraints: list[dict[str, Any]] = [
        {"guided_regex": "[0-9]{2}-[a-z]{3}"}, {"guided_choice": ["yes", "no"]},
        {"response_format": {"type": "json_object"}},
        {"structured_outputs": {"json": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
    ]
    features: list[dict[str, Any]] = [{"temperature": 0}, {"temperature": 0.9, "seed": 2, "n": 2},
                                      {"temperature": 0, "logprobs": 2}, {"temperature": 0.7, "top_p": 0.8}]
    return [{"model": "tiny", "prompt": [int(t) for t in rng.integers(1, vocab, size=length)], "max_tokens": 6,
             **constraints[i % len(constraints)], **features[i % len(features)]}
            for i, length in enumerate([3, 20, 40, 5, 30, 9])]


async def _send_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[int]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(body: dict[str, Any]) -> int:
            async with limit:
                return (await client.post("/v1/completions", json=body)).status_code

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_server_warms_up_then_compiles_nothing(smollm_tokenizer: Any) -> None:
    """The engine core precompiles before ready; its progress reaches /health; then a varied
    workload, structured outputs included, compiles nothing (the core's counters, read through /metrics)."""
    from server import ServerSettings
    from server.background import LocalServer
    from tests.tiny_server import build_tiny_engine

    def settings(_: Any) -> ServerSettings:
        return ServerSettings(served_model_names=["tiny"], model_root="tiny")

    build = functools.partial(build_tiny_engine, **SMALL_PLAN, precompile=True)
    with LocalServer(build, settings, wait_ready=False) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        warming: list[str] = []
        for _ in range(3000):
            health = client.get("/health")
            if health.status_code == 200:
                break
            assert health.status_code == 503 and health.headers["retry-after"] == "1"
            warming.append(health.text)
            time.sleep(0.05)
        assert health.status_code == 200
        progress = [re.fullmatch(r"warming up: (\d+) of (\d+) programs", text) for text in warming]
        progress = [m for m in progress if m is not None]
        assert progress, warming  # the core's progress reached /health
        done, totals = [int(m.group(1)) for m in progress], {int(m.group(2)) for m in progress}
        assert len(totals) == 1 and done == sorted(done) and done[-1] <= totals.pop()
        before = client.get("/metrics").text
        rng = np.random.default_rng(0)
        for concurrency in (1, 4):  # batches of one, then of max_num_seqs
            statuses = asyncio.run(_send_all(server.url, _varied_requests(rng, 2000), concurrency))
            assert statuses == [200] * len(statuses)
        after = client.get("/metrics").text
    assert _metric(after, "tessera:num_compilations_total") == _metric(before, "tessera:num_compilations_total")
    assert _metric(after, "tessera:num_compilations_after_ready_total") == 0
    assert _metric(after, "tessera:prefix_cache_hits_total") > 0


def _offline_workload(llm: LLM) -> list[list[int]]:
    rng = np.random.default_rng(1)
    prompts = [[int(t) for t in rng.integers(1, 512, size=n)] for n in (1, 5, 20, 33, MAX_MODEL_LEN - 5)]
    params = [SamplingParams(temperature=0, max_tokens=4), SamplingParams(temperature=0.8, top_p=0.9, seed=3, n=2),
              SamplingParams(temperature=0, logprobs=5, prompt_logprobs=2, max_tokens=4),
              SamplingParams(temperature=0.5, top_k=3, presence_penalty=1.0, logit_bias={3: 2.0}, max_tokens=3),
              SamplingParams(temperature=0, max_tokens=4)]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [o.token_ids for out in outputs for o in out.outputs]


def test_llm_generate_compiles_nothing_and_a_second_start_loads_from_the_cache(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    settings = dict(**SMALL_PLAN, model=str(model), load_format="dummy", compilation_cache_dir=str(tmp_path / "jax"),
                    use_checkpoint_cache=False)
    compiled_before = xla_compile_count()
    first = LLM(**settings)
    assert xla_compile_count() > compiled_before  # a fresh cache directory: the plan was compiled
    lowered = compilation_count()
    tokens = _offline_workload(first)
    assert compilation_count() == lowered
    assert first.engine.stats().num_late_compilations == 0

    assert first.engine.runner.store is None  # the executable store is GPU-only (engine/executable_store.py)
    compiled_before, hits_before = xla_compile_count(), cache_hit_count()
    second = LLM(**settings)
    assert xla_compile_count() == compiled_before  # every program came from the cache
    assert cache_hit_count() - hits_before >= second.engine.compile_progress()[1]
    assert _offline_workload(second)[0] == tokens[0]  # greedy: the same tokens from the loaded programs


def test_a_bias_row_beyond_the_planned_width_is_refused(make_tiny_engine: Any) -> None:
    """logit_bias entries and, while min_tokens holds, the eos and stop ids share the sampler's
    fixed-width bias row: a request that would overflow it is refused at admission."""
    engine = make_tiny_engine(**SMALL_PLAN)
    engine.eos_token_ids = frozenset(range(MAX_BIAS_ROW_ENTRIES - MAX_LOGIT_BIAS_ENTRIES))  # very many eos ids
    fields: dict[str, Any] = dict(logit_bias={i: 1.0 for i in range(MAX_LOGIT_BIAS_ENTRIES)}, stop_token_ids=[5],
                                  max_tokens=2)
    with pytest.raises(ValueError, match="logit_bias must have at most"):
        engine.add_request("over", [1, 2], SamplingParams(**fields, min_tokens=1))
    engine.add_request("fits", [1, 2], SamplingParams(**fields))  # no min_tokens: nothing suppressed


def test_guard_counts_and_logs_a_program_compiled_after_ready(caplog: pytest.LogCaptureFixture) -> None:
    from engine.step_programs import StepPrograms

    compiled: list[int] = []

    def compile_key(key: int) -> Any:
        compiled.append(key)
        return lambda x: x * key

    programs = StepPrograms("test", compile_key, describe=lambda key: f"shape {key}")
    programs.precompile([1, 2], workers=2)
    assert programs.ready and sorted(compiled) == [1, 2] and programs.compiled == 2
    assert programs.run(2, 5) == 10 and programs.late_compilations == 0
    with caplog.at_level("WARNING"):
        assert programs.run(3, 5) == 15
    assert programs.late_compilations == 1 and "shape 3" in caplog.text
    assert programs.run(3, 1) == 3 and compiled.count(3) == 1  # compiled once, then in the table
