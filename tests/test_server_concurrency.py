"""Many concurrent streams stay separate; a client that hangs up has its request aborted and its KV
blocks freed at once."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

NUM_CLIENTS = 64
TOKENS_EACH = 8


def _word_tokens(tokenizer: Any, count: int) -> list[int]:
    """Token ids that decode on their own to distinct plain words, so repeats concatenate cleanly."""
    found, seen = [], set()
    for token in range(1000, 20000):
        text = tokenizer.decode([token])
        if text.strip().isalpha() and text.isascii() and text not in seen:
            found.append(token)
            seen.add(text)
            if len(found) == count:
                return found
    raise AssertionError("not enough word tokens")


def _wait_until(condition: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_64_concurrent_streams_get_only_their_own_tokens(tiny_server: Any) -> None:
    """Each client biases its own token so strongly that the model can only say that token."""
    tokenizer = tiny_server.model.tokenizer
    tokens = _word_tokens(tokenizer, NUM_CLIENTS)

    async def one(client: AsyncOpenAI, token: int) -> tuple[str, int]:
        stream = await client.completions.create(
            model="tiny", prompt=f"Client {token} says", max_tokens=TOKENS_EACH, temperature=0.0, stream=True,
            logit_bias={str(token): 100}, stream_options={"include_usage": True},
        )
        text, usage = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
        return text, usage

    async def all_clients() -> list[tuple[str, int]]:
        async with AsyncOpenAI(base_url=f"{tiny_server.url}/v1", api_key="x", max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one(client, t) for t in tokens))

    results = asyncio.run(all_clients())
    for token, (text, usage) in zip(tokens, results, strict=True):
        assert usage == TOKENS_EACH
        assert text == tokenizer.decode([token] * TOKENS_EACH)
    stats = tiny_server.engine_loop.stats
    assert _wait_until(lambda: tiny_server.engine_loop.stats.num_free_blocks == stats.num_blocks)


@pytest.fixture(scope="module")
def throttled() -> Any:
    """A server whose engine core sleeps before each step, so a long request surely outlives the
    client, which shares this process (and its GIL) with the API server and may be scheduled late."""
    from server import ServerSettings
    from server.background import LocalServer
    from tests.tiny_server import build_tiny_engine

    def settings(_: Any) -> ServerSettings:
        return ServerSettings(served_model_names=["tiny"], model_root="tiny")

    with LocalServer(functools.partial(build_tiny_engine, step_delay_s=0.01), settings) as server:
        yield server


def _metric(server: Any, name: str, label: str = "") -> float:
    """One sample of /metrics (the core's stats as this API server last heard them)."""
    text = httpx.get(f"{server.url}/metrics").text
    line = next((ln for ln in text.splitlines() if ln.startswith(name + "{") and label in ln), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def _aborted(server: Any) -> float:
    return _metric(server, "tessera:request_success_total", 'finished_reason="abort"')


def _blocks_free(server: Any) -> bool:
    return _metric(server, "tessera:num_kv_blocks_free") == _metric(server, "tessera:num_kv_blocks_total")


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_disconnect_mid_stream_aborts_and_frees_blocks(throttled: Any, endpoint: str) -> None:
    server = throttled
    aborted_before = _aborted(server)
    generated_before = _metric(server, "tessera:generation_tokens_total")
    body: dict[str, Any] = {"model": "tiny", "max_tokens": 400, "temperature": 0, "stream": True,
                            "ignore_eos": True}
    body.update({"prompt": "A long story"} if "chat" not in endpoint else
                {"messages": [{"role": "user", "content": "A long story"}]})
    with (httpx.Client(base_url=server.url, timeout=60) as client,
          client.stream("POST", endpoint, json=body) as response):
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data: ")
            if chunks == 5:
                # checked before leaving the loop: closing the line iterator closes the connection
                assert not _blocks_free(server)  # the request holds blocks in the core now
                break
    assert _wait_until(lambda: _blocks_free(server) and server.engine_loop.num_pending == 0)
    assert _aborted(server) == aborted_before + 1
    assert _metric(server, "tessera:generation_tokens_total") - generated_before < 400  # stopped early


def test_disconnect_while_waiting_for_a_full_response_aborts(throttled: Any) -> None:
    server = throttled
    aborted_before = _aborted(server)
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "tiny", "prompt": "Long", "max_tokens": 480, "temperature": 0,
                       "ignore_eos": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert _wait_until(lambda: not _blocks_free(server))
    assert _wait_until(lambda: _blocks_free(server) and server.engine_loop.num_pending == 0)
    assert _aborted(server) == aborted_before + 1
    assert httpx.get(f"{server.url}/health").status_code == 200
