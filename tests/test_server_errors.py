"""Bad input, SSE framing, API keys, overload and a dead engine: the status, OpenAI's error shape,
and a server that keeps serving."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from litestar.testing import TestClient

from server import ServerSettings

GOOD = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def http(tiny_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize("body, status, param, message", [
    (b'{"model": "tiny", "prompt": [1, 2', 400, None, "not valid JSON"),
    (b'{"model": "tiny", "prompt": [1], "max_tokens": "ten"}', 400, "max_tokens", "Expected `int | null`"),
    (b'{"model": "tiny", "prompt": {"a": 1}}', 400, "prompt", "Expected"),
    (b'{"model": "tiny", "prompt": [1], "max_tokens": -5}', 400, "max_tokens", "Expected `int` >= 1"),
    (b'{"model": "tiny", "prompt": [1], "temperature": -1}', 400, "temperature", "Expected `float` >= 0"),
    (b'{"model": "tiny", "prompt": [1], "logit_bias": {"x": 1}}', 400, "logit_bias", "token ids"),
    (b'{"model": "tiny", "prompt": [1, 99999999]}', 400, "prompt", "out of range"),
    (b'{"model": "tiny", "prompt": []}', 400, "prompt", "length >= 1"),
    (b'{"model": "tiny", "prompt": [1], "stream_options": {"include_usage": true}}', 400, "stream_options",
     "stream is true"),
    (b'{"model": "nope", "prompt": [1]}', 404, "model", "The model `nope` does not exist."),
], ids=["malformed-json", "wrong-type", "wrong-prompt-type", "negative-max-tokens", "negative-temperature",
        "bad-logit-bias", "token-out-of-range", "empty-prompt", "stream-options-without-stream", "unknown-model"])
def test_bad_completion_requests(http: httpx.Client, body: bytes, status: int, param: str | None,
                                 message: str) -> None:
    error = _error(http.post("/v1/completions", content=body, headers={"content-type": "application/json"}),
                   status)
    assert error["param"] == param
    assert message.lower() in error["message"].lower()


def test_too_long_prompt_gets_vllms_message(http: httpx.Client) -> None:
    error = _error(http.post("/v1/completions", json={**GOOD, "prompt": [5] * 600}), 400)
    assert error["message"].startswith("This model's maximum context length is 512 tokens. However, your request "
                                       "has 600 input tokens")
    error = _error(http.post("/v1/completions", json={**GOOD, "prompt": [5] * 10, "max_tokens": 510}), 400)
    assert "maximum context length is 512 tokens" in error["message"]


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"messages": []}, "messages"),
], ids=["unknown-response-format", "top-logprobs-alone", "tools", "image-part", "no-messages"])
def test_bad_chat_requests(http: httpx.Client, extra: dict[str, Any], param: str) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **extra}
    assert _error(http.post("/v1/chat/completions", json=body), 400)["param"] == param


def test_unknown_route_and_method_have_the_error_shape(http: httpx.Client) -> None:
    _error(http.get("/v1/nothing-here"), 404)
    _error(http.get("/v1/completions"), 405)


def test_openai_client_sees_typed_errors(tiny_server: Any) -> None:
    client = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="tiny", prompt=[5] * 600)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_unknown_fields_are_ignored_and_logged(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="server.app"):
        response = http.post("/v1/completions", json={**GOOD, "frobnicate": 1, "best_of": 1})
    assert response.status_code == 200
    assert "ignored: frobnicate" in caplog.text


def test_sse_framing_on_the_wire(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/completions", json={**GOOD, "stream": True, "max_tokens": 3,
                                                      "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert [p["object"] for p in payloads] == ["text_completion"] * len(payloads)
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 3
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"


def test_server_still_serves_after_bad_input(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    assert http.post("/v1/completions", json=GOOD).json()["usage"]["completion_tokens"] == 2


# ---- apps of their own on the session's engine core (no network: Litestar's TestClient) -----------
def _app(tiny_server: Any, index: int, **settings: Any) -> Any:
    return tiny_server.app_for(index, ServerSettings(served_model_names=["tiny"], model_root="tiny", **settings))


def _when_ready(client: TestClient[Any]) -> TestClient[Any]:
    """Waits for the core's answer to this app's hello (until then /health answers 503 "waiting for the
    engine core")."""
    for _ in range(200):
        if client.get("/health").status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError("the app never heard from the engine core")


def test_api_keys(tiny_server: Any) -> None:
    with TestClient(_app(tiny_server, 1, api_keys=["sesame", "open"])) as client:
        _when_ready(client)
        response = client.get("/v1/models")
        error = _error(response, 401)  # type: ignore[arg-type]
        assert error["type"] == "AuthenticationError"
        assert response.headers["www-authenticate"].startswith("Bearer")
        _error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)  # type: ignore[arg-type]
        _error(client.get("/v1/models", headers={"Authorization": "Basic sesame"}), 401)  # type: ignore[arg-type]
        _error(client.post("/tokenize", json={"prompt": "x"}), 401)  # type: ignore[arg-type]
        for key in ("sesame", "open"):
            assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/metrics").status_code == 200


def test_overloaded_server_answers_503(tiny_server: Any) -> None:
    with TestClient(_app(tiny_server, 2, max_pending_requests=0)) as client:
        _when_ready(client)
        response = client.post("/v1/completions", json=GOOD)
        assert "overloaded" in _error(response, 503)["message"]  # type: ignore[arg-type]
        assert response.headers["retry-after"] == "1"


@pytest.fixture(scope="module")
def faulty_server() -> Iterator[Any]:
    """An engine core whose first step raises and whose add_request raises on prompts with token 13."""
    from server.background import LocalServer
    from tests.tiny_server import build_faulty_engine

    def settings(_: Any) -> ServerSettings:
        return ServerSettings(served_model_names=["tiny"], model_root="tiny")

    with LocalServer(build_faulty_engine, settings) as server:
        yield server


def test_failing_step_ends_its_requests_and_the_server_goes_on(faulty_server: Any) -> None:
    with httpx.Client(base_url=faulty_server.url, timeout=60) as client:
        error = _error(client.post("/v1/completions", json=GOOD), 500)
        assert "device hiccup" not in error["message"]
        assert client.get("/health").status_code == 200
        assert client.post("/v1/completions", json=GOOD).json()["usage"]["completion_tokens"] == 2
        stats = faulty_server.engine_loop.stats
        assert stats.num_free_blocks == stats.num_blocks


def test_failing_add_ends_only_that_request(faulty_server: Any) -> None:
    with httpx.Client(base_url=faulty_server.url, timeout=60) as client:
        _error(client.post("/v1/completions", json={**GOOD, "prompt": [13]}), 500)
        assert client.get("/health").status_code == 200
        assert client.post("/v1/completions", json=GOOD).json()["usage"]["completion_tokens"] == 2
