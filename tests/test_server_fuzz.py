"""Schemathesis against the live server (issue #17): requests generated from our own OpenAPI
document, valid and invalid, must never get a 5xx, and the engine must still be alive after.

Bounded: a fresh tiny-model server with a 64-token context (so no generated request runs long)
and a fixed number of cases per operation; a few hundred cases in all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import ServerSettings, build_app
from server.background import BackgroundServer
from tests.conftest import SMOLLM2_VOCAB

CASES_PER_OPERATION = 40
FUZZ_MAX_MODEL_LEN = 64


@pytest.fixture(scope="module")
def fuzz_server(make_tiny_engine: Any) -> Iterator[BackgroundServer]:
    engine = make_tiny_engine(max_model_len=FUZZ_MAX_MODEL_LEN, max_num_seqs=8)
    app = build_app(engine, ServerSettings(served_model_names=["tiny"], model_root="tiny", log_requests=False),
                    log_stats_interval_s=None)
    with BackgroundServer(app, log_level="error") as server:
        server.app = app  # type: ignore[attr-defined]
        yield server
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_blocks, "KV blocks leaked over the fuzz run"


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/docs/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_5xx_and_the_engine_lives(fuzz_server: BackgroundServer) -> None:
    operations = _operations(fuzz_server.url)
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize"}
    statuses: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        _fuzz(operation, fuzz_server.url, statuses)
    print("fuzz cases by (path, status):", dict(statuses))
    assert httpx.get(f"{fuzz_server.url}/health", timeout=30).status_code == 200
    for path in ("/v1/completions", "/v1/chat/completions"):  # valid cases reached the engine, not only 400s
        assert statuses[(path, 200)] > 0 and statuses[(path, 400)] > 0, statuses


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

    @given(case=st.one_of(raw, raw.map(_aimed)))
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
