"""``python -m engine.serve --mesh tp=4`` on 4 CPU devices answers a chat request end to end.

The model is a tiny random Llama with SmolLM2's vocabulary (``--load-format dummy``) next to
the SmolLM2 tokenizer and chat template, saved from the embedded GGUF; SmolLM2 itself has 9
query heads, which do not split over tp=4.
"""

from __future__ import annotations

import json
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
    model_dir = tmp_path / "tiny-llama"
    smollm_tokenizer.hf.save_pretrained(model_dir)
    (model_dir / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "torch_dtype": "float32", "eos_token_id": 2,
    }))
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               TESSERA_COMPILATION_CACHE="")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.serve", str(model_dir), "--load-format", "dummy",
             "--mesh", "tp=4", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
             "--num-gpu-blocks-override", "64", "--max-num-seqs", "4", "--skip-warmup", "--disable-log-stats"],
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
                "model": "tiny-llama", "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 5, "temperature": 0,
            })
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"
    assert "mesh dp=1,tp=4 over 4 cpu devices" in log_path.read_text()
