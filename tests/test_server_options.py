"""Server options users expect from vLLM: trusted request chat templates (rendered off the event
loop with limits), CORS, --root-path, vLLM's metric names, and ending streams at shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from server import ServerSettings, build_app
from server.background import BackgroundServer
from server.root_path import under_root_path

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
LOOP_FOREVER = "{% for i in range(100000) %}{% for j in range(100000) %}{{ i * j }}{% endfor %}{% endfor %}"


def _app(make_tiny_engine: Any, **settings: Any) -> Any:
    return build_app(make_tiny_engine(), ServerSettings(served_model_names=["tiny"], model_root="tiny", **settings),
                     log_stats_interval_s=None)


def test_trusted_request_templates_render_in_a_sandbox_with_limits(make_tiny_engine: Any) -> None:
    app = _app(make_tiny_engine, trust_request_chat_template=True)
    app.state.server.template_sandbox.timeout_s = 3.0
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        ok = http.post("/tokenize", json={"messages": CHAT["messages"]})
        assert ok.status_code == 200
        rendered = http.post("/v1/chat/completions", json={**CHAT, "chat_template": template})
        assert rendered.status_code == 200, rendered.text
        assert rendered.json()["usage"]["prompt_tokens"] == len(
            app.state.server.engine.tokenizer.encode("<user>hi", add_special_tokens=False))
        for bad in ("{{ 1/0 }}", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{{ range(10**9)|list }}"):
            error = http.post("/v1/chat/completions", json={**CHAT, "chat_template": bad})
            assert error.status_code == 400 and error.json()["error"]["param"] == "chat_template", error.text
        statuses: list[int] = []
        slow = threading.Thread(target=lambda: statuses.append(
            http.post("/v1/chat/completions", json={**CHAT, "chat_template": LOOP_FOREVER}).status_code))
        slow.start()
        sandbox = app.state.server.template_sandbox
        while slow.is_alive() and not sandbox.busy:
            threading.Event().wait(0.01)
        assert http.get("/health").status_code == 200
        assert slow.is_alive()  # /health was answered while the template was still looping
        slow.join(60)
        assert statuses == [400]
        assert http.post("/v1/chat/completions", json={**CHAT, "chat_template": template}).status_code == 200


def test_cors_only_for_allowed_origins(make_tiny_engine: Any, tiny_server: Any) -> None:
    with TestClient(_app(make_tiny_engine, allowed_origins=["https://ui.example"])) as client:
        preflight = client.options("/v1/completions", headers={
            "Origin": "https://ui.example", "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
        other = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    default = httpx.get(f"{tiny_server.url}/health", headers={"Origin": "https://ui.example"})
    assert "access-control-allow-origin" not in default.headers


def test_root_path_prefix_is_taken_off_before_routing() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])

    wrapped = under_root_path(app, "/tessera")
    for path in ("/tessera/v1/models", "/tessera/tessera/v1/models", "/v1/models", "/tesseract/x", "/tessera"):
        asyncio.run(wrapped({"type": "http", "path": path}, None, None))
    assert seen == ["/v1/models", "/v1/models", "/v1/models", "/tesseract/x", "/"]
    assert under_root_path(app, "") is app


def test_vllm_metric_names(tiny_server: Any) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        text = http.get("/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total", "vllm:request_success_total", "vllm:num_preemptions_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count",
                 "vllm:request_prefill_time_seconds_count", "vllm:request_decode_time_seconds_count",
                 "vllm:request_inference_time_seconds_count", "vllm:request_prompt_tokens_bucket",
                 "vllm:request_generation_tokens_bucket", "tessera:num_requests_running"):
        assert f"\n{name}" in text, name
    queued = next(line for line in text.splitlines() if line.startswith("vllm:request_queue_time_seconds_count"))
    assert float(queued.rsplit(" ", 1)[1]) >= 1


def test_ending_all_requests_closes_each_stream_with_an_error_and_done(tiny_server: Any) -> None:
    """What shutdown does past --graceful-shutdown-timeout (engine/serve.py), on the shared server."""
    lines: list[str] = []
    first_chunk = threading.Event()

    def stream() -> None:
        body = {"model": "tiny", "prompt": [1, 2], "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{tiny_server.url}/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    first_chunk.set()

    worker = threading.Thread(target=stream)
    worker.start()
    assert first_chunk.wait(60)
    tiny_server.engine_loop.end_all("shutting down")
    worker.join(60)
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == 503 and error["message"] == "shutting down"


@pytest.mark.parametrize("prefixes", [("custom:",)])
def test_metric_prefix_is_a_choice(make_tiny_engine: Any, prefixes: tuple[str, ...]) -> None:
    with TestClient(_app(make_tiny_engine, metric_prefixes=prefixes)) as client:
        text = client.get("/metrics").text
    assert "custom:num_requests_running" in text and "vllm:" not in text
