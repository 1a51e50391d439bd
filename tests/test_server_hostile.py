"""A hostile client's inputs (issue #17): each is a 400 in OpenAI's error shape while another
request keeps streaming, the engine survives, and the OpenAPI document shows the ranges."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine import request_limits as lim

GOOD = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def http(tiny_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert "Traceback" not in error["message"]
    return error


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_COMPLETIONS = [
    ("string-max-tokens", {"max_tokens": "10"}, "max_tokens"),
    ("huge-top-k", {"top_k": 2**40}, "top_k"),
    ("huge-stop-token-id", {"stop_token_ids": [2**40], "min_tokens": 1}, "stop_token_ids"),
    ("stop-token-id-outside-vocab", {"stop_token_ids": [10**6], "min_tokens": 1}, "stop_token_ids"),
    ("huge-n", {"n": 20000}, "n"),
    ("huge-best-of", {"best_of": 1000}, "best_of"),
    ("huge-logprobs", {"logprobs": lim.MAX_LOGPROBS + 1}, "logprobs"),
    ("long-stop-list", {"stop": ["x"] * (lim.MAX_STOP_STRINGS + 1)}, "stop"),
    ("huge-logit-bias", {"logit_bias": {str(i): 1 for i in range(lim.MAX_LOGIT_BIAS_ENTRIES + 1)}}, "logit_bias"),
    ("logit-bias-outside-vocab", {"logit_bias": {"999999": 1}}, "logit_bias"),
    ("infinite-temperature", {"temperature": float("inf")}, "temperature"),
    ("huge-seed", {"seed": 2**70}, "seed"),
    ("bool-as-n", {"n": True}, "n"),
    ("too-many-prompts", {"prompt": [[1]] * (lim.MAX_PROMPTS_PER_REQUEST + 1)}, "prompt"),
    ("too-many-sequences", {"prompt": [[1]] * 8, "n": lim.MAX_SEQUENCES_PER_REQUEST // 8 + 1}, "n"),
    ("huge-text-prompt", {"prompt": "a" * (512 * lim.MAX_CHARS_PER_TOKEN + 1)}, "prompt"),
    ("min-tokens-over-max", {"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
]


@pytest.mark.parametrize("extra, param", [c[1:] for c in BAD_COMPLETIONS], ids=[c[0] for c in BAD_COMPLETIONS])
def test_bad_completion_fields(http: httpx.Client, extra: dict[str, Any], param: str) -> None:
    assert _error(_post(http, "/v1/completions", {**GOOD, **extra}))["param"] == param


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """JSON as a client may write it, infinity included (1e999 decodes to inf)."""
    content = json.dumps(body).replace("Infinity", "1e999")
    return http.post(path, content=content, headers={"content-type": "application/json"})


BAD_CHATS = [
    ("unknown-role", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ("request-template-untrusted", {"chat_template": "{{ 1/0 }}"}, "chat_template"),
    ("reserved-template-kwarg", {"chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs"),
    ("huge-top-logprobs", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("string-max-completion-tokens", {"max_completion_tokens": "3"}, "max_completion_tokens"),
]


@pytest.mark.parametrize("extra, param", [c[1:] for c in BAD_CHATS], ids=[c[0] for c in BAD_CHATS])
def test_bad_chat_fields(http: httpx.Client, extra: dict[str, Any], param: str) -> None:
    assert _error(http.post("/v1/chat/completions", json={**CHAT, **extra}))["param"] == param


@pytest.mark.parametrize("body", [
    '{"model": "tiny", "prompt": [1], "user": ' + _deep(1500) + "}",
    '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"a": ' + _deep(200) + "}]}",
], ids=["deep-array", "deep-tools"])
def test_deeply_nested_json_is_a_400(http: httpx.Client, body: str) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    assert "nest" in _error(http.post(path, content=body, headers={"content-type": "application/json"}))["message"]


def test_body_must_be_json(http: httpx.Client) -> None:
    body = json.dumps(GOOD)
    assert "Content-Type" in _error(http.post("/v1/completions", content=body,
                                              headers={"content-type": "text/plain"}))["message"]
    ok = http.post("/v1/completions", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_null_content_is_an_empty_message(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None},
                {"role": "user", "content": "again"}]
    response = http.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_bad_requests_fail_alone_while_a_stream_goes_on(http: httpx.Client, tiny_server: Any) -> None:
    events: list[str] = []

    def stream() -> None:
        body = {**GOOD, "max_tokens": 40, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{tiny_server.url}/v1/completions", json=body, timeout=120) as response:
            events.extend(line for line in response.iter_lines() if line)

    worker = threading.Thread(target=stream)
    worker.start()
    for _, extra, _ in BAD_COMPLETIONS:
        assert _post(http, "/v1/completions", {**GOOD, **extra}).status_code == 400
    worker.join(120)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("error" not in c for c in chunks)
    assert sum(len(c["choices"]) for c in chunks) >= 1 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert http.get("/health").status_code == 200
    stats = tiny_server.engine_loop.stats
    assert stats.num_free_blocks == stats.num_blocks


def test_openapi_shows_ranges_error_shape_and_streaming(http: httpx.Client) -> None:
    spec = http.get("/docs/openapi.json").json()
    request_schema = spec["components"]["schemas"]["CompletionRequest"]["properties"]
    n_schema = json.dumps(request_schema["n"])
    assert f'"maximum": {lim.MAX_N}' in n_schema
    post = spec["paths"]["/v1/completions"]["post"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    error_ref = json.dumps(post["responses"]["400"])
    assert "ErrorResponse" in error_ref
    assert "ErrorInfo" in json.dumps(spec["components"]["schemas"]["ErrorResponse"])


@pytest.mark.parametrize("body, limit, deeper", [
    ('{"a": "[[[[[[[[", "b": [[1]]}', 3, False),
    ('{"a": "[[[[[[[[", "b": [[1]]}', 2, True),
    ('{"a": "\\\\", "b": [[[]]]}', 4, False),  # an escaped backslash does not escape the closing quote
    ('{"a": "\\"[[[[[[", "b": [[[]]]}', 4, False),  # an escaped quote does not close the string
    ('{"a": "\\"[[[[[[", "b": [[[]]]}', 3, True),
    (_deep(65), 64, True),
    (_deep(64), 64, False),
], ids=["brackets-in-string", "just-too-deep", "escaped-backslash", "escaped-quote", "escaped-quote-deep",
        "65-levels", "64-levels"])
def test_nesting_depth_ignores_brackets_in_strings(body: str, limit: int, deeper: bool) -> None:
    from server.request_body import nests_deeper_than

    assert json.loads(body) is not None  # every case is valid JSON
    assert nests_deeper_than(body.encode(), limit) is deeper
