"""Compile once: after the bucket plan is precompiled, no workload compiles anything, on the
server or offline, and a second start in the same cache directory loads instead of compiling.

The plans here are a few programs (a 64-token context, 4 sequences, 32-token steps) so that
precompiling stays a few seconds on a small CPU; tests/test_bucket_plan.py checks that larger
plans cover every step shape.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from engine import LLM, EngineConfig, LLMEngine, SamplingParams
from engine.compilation import cache_hit_count, compilation_count, xla_compile_count
from models.loaders import LoadedModel

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
    return bodies


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


def test_server_warms_up_then_compiles_nothing(tiny_loaded: LoadedModel) -> None:
    from server import ServerSettings, build_app
    from server.background import BackgroundServer

    engine = LLMEngine(EngineConfig(**SMALL_PLAN, compilation_cache_dir=None), tiny_loaded, precompile=False)
    planned = engine.compile_progress()[1]
    app = build_app(engine, ServerSettings(served_model_names=["tiny"], model_root="tiny"),
                    log_stats_interval_s=None, warm_up=True)
    with BackgroundServer(app) as background, httpx.Client(base_url=background.url, timeout=30) as client:
        first = client.get("/health")
        assert first.status_code == 503
        assert re.fullmatch(rf"warming up: \d+ of {planned} programs", first.text)
        for _ in range(3000):
            health = client.get("/health")
            if health.status_code == 200:
                break
            assert health.status_code == 503
            time.sleep(0.1)
        assert health.status_code == 200
        before = client.get("/metrics").text
        rng = np.random.default_rng(0)
        for concurrency in (1, 4):  # batches of one, then of max_num_seqs
            statuses = asyncio.run(_send_all(background.url, _varied_requests(rng, 2000), concurrency))
            assert statuses == [200] * len(statuses)
        after = client.get("/metrics").text
    assert _metric(after, "tessera:num_compilations_total") == _metric(before, "tessera:num_compilations_total")
    assert _metric(after, "tessera:num_compilations_after_ready_total") == 0
    assert engine.stats().num_late_compilations == 0
    assert engine.stats().prefix_cache_hits > 0


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

    compiled_before, hits_before = xla_compile_count(), cache_hit_count()
    second = LLM(**settings)
    assert xla_compile_count() == compiled_before  # every program came from the cache
    assert cache_hit_count() - hits_before >= second.engine.compile_progress()[1]
    assert _offline_workload(second)[0] == tokens[0]  # greedy: the same tokens from the loaded programs


@pytest.mark.parametrize("bias_entries", [2000])
def test_logit_bias_beyond_the_planned_width_is_refused(make_tiny_engine: Any, bias_entries: int) -> None:
    engine = make_tiny_engine(**SMALL_PLAN)
    with pytest.raises(ValueError, match="logit_bias"):
        engine.add_request("r", [1, 2], SamplingParams(logit_bias={i: 1.0 for i in range(bias_entries)}))


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
