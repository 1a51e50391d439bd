"""End to end on the real SmolLM2-135M-Instruct: ``python -m engine.serve`` in a subprocess, the
openai client, and a graceful SIGTERM shutdown with exit code 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(smollm_tokenizer: object) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.serve", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1K",
         "--max-num-seqs", "4", "--served-model-name", "smol", "smollm2", "--skip-warmup",
         "--disable-log-stats"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the server did not come up (exit code {proc.poll()})")
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_chat_with_smollm2_streamed_and_not(served: tuple[subprocess.Popen[bytes], str]) -> None:
    _, url = served
    client = OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=300)
    assert [m.id for m in client.models.list().data] == ["smol", "smollm2"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = client.chat.completions.create(model="smol", messages=messages, max_tokens=16,  # type: ignore[arg-type]
                                          temperature=0)
    answer = full.choices[0].message.content or ""
    assert "Paris" in answer
    stream = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16,  # type: ignore
                                            temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer


@pytest.mark.slow
def test_sigterm_lets_the_in_flight_stream_finish_then_exits_0(served: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = served
    body = {"model": "smol", "prompt": "The capital of France is", "max_tokens": 24, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert '"finish_reason":null' in first
    assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2]
    assert proc.wait(timeout=60) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)
