"""Schemathesis against the live server (issue #17): requests generated from our own OpenAPI
document, valid and invalid, must never get a 5xx, and the engine must still be alive after.

Bounded: a fresh tiny-model server with a 64-token context (so no generated request runs long)
and a fixed number of cases per operation; a few hundred cases in all.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import ServerSettings
from server.background import LocalServer
from tests.tiny_server import SMOLLM2_VOCAB, build_tiny_engine

CASES_PER_OPERATION = 40
FUZZ_MAX_MODEL_LEN = 64


@pytest.fixture(scope="module")
def fuzz_server(smollm_tokenizer: Any) -> Iterator[LocalServer]:
    """A tiny model behind the multi-process server: its engine core in a child process."""
    build = functools.partial(build_tiny_engine, max_model_len=FUZZ_MAX_MODEL_LEN, max_num_seqs=8)

    def settings(_: Any) -> ServerSettings:
        return ServerSettings(served_model_names=["tiny"], model_root="tiny", log_requests=False)

    with LocalServer(build, settings) as server:
        yield server
        _assert_no_block_in_use(server)


def _assert_no_block_in_use(server: LocalServer) -> None:
    """Every request has ended: the core's latest stats show all KV blocks free (it reports stats
    after each step and after aborts, so the last finish or disconnect shows up within moments)."""
    deadline = time.monotonic() + 30
    while True:
        stats = server.engine_loop.stats
        if stats.num_running == stats.num_waiting == 0 and stats.num_free_blocks == stats.num_blocks:
            return
        assert time.monotonic() < deadline, f"KV blocks leaked over the fuzz run: {stats}"
        time.sleep(0.2)


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/docs/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_5xx_and_the_engine_lives(fuzz_server: LocalServer) -> None:
    operations = _operations(fuzz_server.url)
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize"}
    statuses: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        _fuzz(operation, fuzz_server.url, statuses)
    print("fuzz cases by (path, status):", dict(statuses))
    assert httpx.get(f"{fuzz_server.url}/health", timeout=30).status_code == 200
    for path in ("/v1/completions", "/v1/chat/completions"):  # valid cases reached the engine, not only 400s
        assert statuses[(path, 200)] > 0 and statuses[(path, 400)] > 0, statuses


def _core_fields(case: Any) -> Any:
    """The case cut down to what a plain request needs (the prompt or messages, a few sampling
    numbers), then aimed: random optional fields (schemas, tools, bias maps...) make almost every
    full body a 400, and the engine must see valid requests too."""
    if isinstance(case.body, dict):
        case.body = {k: v for k, v in case.body.items()
                     if k in ("prompt", "messages", "max_tokens", "temperature", "top_p", "n", "stream")}
    return _aimed(case)


def _aimed(case: Any) -> Any:
    """The same case with the served model's name and in-vocabulary prompt ids, so that it gets past
    the model lookup and reaches the engine (random names and ids are almost always a 404 or 400)."""
    body = case.body
    if isinstance(body, dict):
        body["model"] = "tiny"
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            body["prompt"] = [t % SMOLLM2_VOCAB for t in prompt]
    return case


def _fuzz(operation: Any, url: str, statuses: Counter[tuple[str, int]]) -> None:
    raw = operation.as_strategy()

    @given(case=st.one_of(raw, raw.map(_aimed), raw.map(_core_fields)))
    @settings(max_examples=CASES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def one_case(case: Any) -> None:
        response = case.call(base_url=url, timeout=120)
        statuses[(operation.path, response.status_code)] += 1
        where = f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code}: {response.text[:300]}"
        assert response.status_code < 500, where
        if response.status_code >= 400 and response.status_code != 405:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}, where

    one_case()
